import NIOCore
import XCTest
@testable import PosternListener

/// `ServerConnectionStateMachine` without a channel: events in, actions out.
final class ServerConnectionStateMachineTests: XCTestCase {
    typealias Machine = ServerConnectionStateMachine

    /// A greeted connection, serving commands.
    func serving(writable: Bool = true) -> Machine {
        var machine = Machine(writable: writable)
        XCTAssertEqual(machine.channelActive(greetingDelay: false), .greet)
        return machine
    }

    /// A turn that handles everything buffered and finds the framers need more.
    func turnThatRanOut(_ machine: inout Machine) {
        XCTAssertTrue(machine.turnStarted())
        XCTAssertTrue(machine.mayTakeCommand())
        machine.inputRanOut()
        machine.turnEnded(bufferedBytes: 0)
    }

    // MARK: Reads and input

    func testReadsWaitForBufferedInputHeldOutputAndPendingWorkButNotForAHandshake() {
        var machine = serving()
        XCTAssertTrue(machine.mayRead, "a fresh connection reads")
        XCTAssertEqual(machine.bytesArrived(), .takeInput)
        XCTAssertFalse(machine.mayRead, "complete input is buffered: handle it before reading more")
        XCTAssertFalse(machine.readRequested(), "held")
        turnThatRanOut(&machine)
        XCTAssertEqual(machine.proceed(bufferedBytes: 0), .read, "the held read goes on once the input is handled")
        _ = machine.writabilityChanged(to: false)
        XCTAssertFalse(machine.mayRead, "output is held: read nothing that would add to it")
        XCTAssertFalse(machine.mayHandleInput)
        _ = machine.writabilityChanged(to: true)
        machine.startWaiting(for: .authentication)
        XCTAssertFalse(machine.mayRead, "AUTH or delivery under way")
        XCTAssertFalse(machine.mayHandleInput)
        XCTAssertTrue(machine.waitEnded())
        machine.startWaiting(for: .tlsHandshake)
        _ = machine.writabilityChanged(to: false)
        XCTAssertTrue(machine.mayRead, "a TLS handshake needs its records whatever else holds input")
        XCTAssertFalse(machine.mayHandleInput)
        machine.closeStarted()
        XCTAssertFalse(machine.mayRead, "a closing connection reads nothing")
        XCTAssertEqual(machine.bytesArrived(), .discard)
    }

    func testOnlyAClientAtItsOutputBoundThatHasSentMoreIsCutOff() {
        var machine = serving()
        _ = machine.bytesArrived()
        XCTAssertEqual(machine.proceed(bufferedBytes: 100), .takeTurnLater, "writable, input left after the turn")
        XCTAssertEqual(machine.proceed(bufferedBytes: 100), .none, "one turn queued at a time")
        XCTAssertTrue(machine.queuedTurnDue())
        XCTAssertEqual(machine.proceed(bufferedBytes: 0), .none)
        XCTAssertEqual(machine.writabilityChanged(to: false).stallTimer, .arm)
        XCTAssertEqual(machine.proceed(bufferedBytes: 100), .cutOff, "at the bound and still sending")
        XCTAssertEqual(machine.proceed(bufferedBytes: 0), .none, "at the bound, nothing more sent: wait for it to read")
        var stalled = machine
        XCTAssertEqual(stalled.stallTimerFired(), .cutOff, "at the bound for the stall timeout with nothing under way")

        var waiting = machine
        waiting.startWaiting(for: .delivery)
        XCTAssertEqual(waiting.proceed(bufferedBytes: 100), .none, "AUTH or delivery must still reach the session: decide when it ends")
        XCTAssertEqual(waiting.stallTimerFired(), .rearm)
        XCTAssertTrue(waiting.stallTimerArmed)

        var handshaking = machine
        handshaking.startWaiting(for: .tlsHandshake)
        XCTAssertEqual(handshaking.proceed(bufferedBytes: 100), .none)

        var closing = machine
        closing.closeStarted()
        XCTAssertEqual(closing.proceed(bufferedBytes: 100), .none, "already closing")
        XCTAssertEqual(closing.stallTimerFired(), .none)
    }

    func testWritableAgainCancelsTheStallTimer() {
        var machine = serving()
        XCTAssertEqual(machine.writabilityChanged(to: false).stallTimer, .arm)
        XCTAssertEqual(machine.writabilityChanged(to: false).stallTimer, .none, "armed once")
        XCTAssertEqual(machine.writabilityChanged(to: true).stallTimer, .cancel)
        XCTAssertEqual(machine.stallTimerFired(), .none, "a timer that fires after all finds the channel writable")
    }

    func testATurnTakesAtMostEightCommands() {
        var machine = serving()
        _ = machine.bytesArrived()
        XCTAssertTrue(machine.turnStarted())
        XCTAssertFalse(machine.turnStarted(), "a turn started from within a turn: the running one goes on")
        var taken = 0
        while machine.mayTakeCommand() { taken += 1 }
        XCTAssertEqual(taken, Machine.commandsPerTurn)
        machine.turnEnded(bufferedBytes: 60)
        XCTAssertFalse(machine.needsInput, "input is left: no read")
        XCTAssertEqual(machine.proceed(bufferedBytes: 60), .takeTurnLater)
        XCTAssertTrue(machine.queuedTurnDue())
        XCTAssertTrue(machine.turnStarted())
        XCTAssertTrue(machine.mayTakeCommand())
        machine.startWaiting(for: .delivery)
        XCTAssertFalse(machine.mayTakeCommand(), "the session waits: the turn ends")
        machine.turnEnded(bufferedBytes: 30)
        XCTAssertEqual(machine.proceed(bufferedBytes: 30), .none, "the delivery's answer takes the next turn")
    }

    func testAWritabilityChangeDuringATurnWaitsForItsEnd() {
        var machine = serving()
        XCTAssertTrue(machine.turnStarted())
        XCTAssertFalse(machine.writabilityChanged(to: false).proceed)
        XCTAssertFalse(machine.mayTakeCommand())
        machine.turnEnded(bufferedBytes: 0)
        XCTAssertTrue(machine.writabilityChanged(to: true).proceed)
    }

    // MARK: The greeting

    func testTheGreetingDelayRefusesAnEarlyTalkerAndGreetsAPatientClient() {
        var early = Machine()
        XCTAssertEqual(early.channelActive(greetingDelay: true), .holdGreeting)
        XCTAssertEqual(early.channelActive(greetingDelay: true), .none, "greeted once")
        XCTAssertEqual(early.bytesArrived(), .keepEarlyTalkerBytes)
        XCTAssertFalse(early.mayHandleInput)
        XCTAssertFalse(early.mayRead, "nothing more is read from an early talker")
        XCTAssertEqual(early.greetingDelayEnded(bufferedBytes: 12), .refuseEarlyTalker)

        var patient = Machine()
        _ = patient.channelActive(greetingDelay: true)
        XCTAssertTrue(patient.mayRead)
        XCTAssertEqual(patient.greetingDelayEnded(bufferedBytes: 0), .greetAndTakeInput)
        XCTAssertTrue(patient.mayHandleInput)
        XCTAssertEqual(patient.greetingDelayEnded(bufferedBytes: 0), .none, "a second timer does nothing")

        var closedMeanwhile = Machine()
        _ = closedMeanwhile.channelActive(greetingDelay: true)
        XCTAssertEqual(closedMeanwhile.quiesce(sessionInData: false), .close)
        closedMeanwhile.closeStarted()
        XCTAssertEqual(closedMeanwhile.greetingDelayEnded(bufferedBytes: 0), .none)
    }

    // MARK: Shutdown, timeouts, answers that come late

    func testShutdownClosesAnIdleConnectionNowAndABusyOneAfterItsAnswer() {
        var idle = serving()
        XCTAssertEqual(idle.quiesce(sessionInData: false), .close)

        var receiving = serving()
        XCTAssertEqual(receiving.quiesce(sessionInData: true), .closeWhenAnswered)
        XCTAssertFalse(receiving.replyQueued(sessionInData: true), "replies within DATA (none) do not close it")
        receiving.startWaiting(for: .delivery)
        XCTAssertTrue(receiving.waitEnded())
        XCTAssertTrue(receiving.replyQueued(sessionInData: false), "the message's answer is written, then the 421")

        var authenticating = serving()
        authenticating.startWaiting(for: .authentication)
        XCTAssertEqual(authenticating.quiesce(sessionInData: false), .closeWhenAnswered)
        XCTAssertTrue(authenticating.waitEnded())
        XCTAssertTrue(authenticating.replyQueued(sessionInData: false))

        var closing = serving()
        closing.closeStarted()
        XCTAssertEqual(closing.quiesce(sessionInData: false), .none, "one closing reply")
    }

    func testTheIdleTimeoutWaitsForADeliveryButNotForAClient() {
        var machine = serving()
        XCTAssertTrue(machine.idleTimedOut(sessionInData: false))
        XCTAssertTrue(machine.idleTimedOut(sessionInData: true), "a client that stopped sending DATA")
        machine.startWaiting(for: .delivery)
        XCTAssertFalse(machine.idleTimedOut(sessionInData: true), "the delivery target answers soon")
        machine.closeStarted()
        XCTAssertFalse(machine.idleTimedOut(sessionInData: false))
    }

    func testAnswersForAConnectionClosedMeanwhileAreDropped() {
        var closing = serving()
        closing.startWaiting(for: .authentication)
        closing.closeStarted()
        XCTAssertFalse(closing.waitEnded(), "the idle timeout closed it while the directory answered")

        var gone = serving()
        gone.startWaiting(for: .delivery)
        gone.channelInactive()
        XCTAssertTrue(gone.isClosed)
        XCTAssertFalse(gone.waitEnded())
        XCTAssertFalse(gone.turnStarted())
        XCTAssertFalse(gone.queuedTurnDue())
    }

    /// STYLE.md: a transition any input can reach gets an action, never a trap. Every event in every state.
    func testEveryEventInEveryStateGetsAnAction() {
        var states: [Machine] = [Machine(), serving(), serving(writable: false)]
        var held = Machine()
        _ = held.channelActive(greetingDelay: true)
        states.append(held)
        for wait in [Machine.Wait.authentication, .delivery, .tlsHandshake] {
            var waiting = serving()
            waiting.startWaiting(for: wait)
            states.append(waiting)
        }
        var closing = serving()
        closing.closeStarted()
        var closed = serving()
        closed.channelInactive()
        states += [closing, closed]
        for state in states {
            for event in 0..<16 {
                var machine = state
                switch event {
                case 0: _ = machine.channelActive(greetingDelay: true)
                case 1: _ = machine.greetingDelayEnded(bufferedBytes: 1)
                case 2: _ = machine.bytesArrived()
                case 3: _ = machine.readRequested()
                case 4: _ = machine.turnStarted(); _ = machine.mayTakeCommand(); machine.turnEnded(bufferedBytes: 1)
                case 5: _ = machine.proceed(bufferedBytes: 1)
                case 6: _ = machine.queuedTurnDue()
                case 7: _ = machine.writabilityChanged(to: false)
                case 8: _ = machine.stallTimerFired()
                case 9: machine.startWaiting(for: .delivery)
                case 10: _ = machine.waitEnded()
                case 11: _ = machine.replyQueued(sessionInData: false)
                case 12: machine.closeStarted()
                case 13: _ = machine.idleTimedOut(sessionInData: true)
                case 14: _ = machine.quiesce(sessionInData: true)
                default: machine.channelInactive()
                }
                if state.isClosed { XCTAssertTrue(machine.isClosed, "a closed connection stays closed") }
            }
        }
    }
}
