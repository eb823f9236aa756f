import NIOCore
import PosternSMTP
import XCTest

/// The relay encodes a large message chunk by chunk (issue #20): the result must not depend on where the chunks split.
final class DotStufferTests: XCTestCase {
    func testChunkedEncodingEqualsWholeEncodingAtEverySplit() {
        let samples = [".a\r\n..b\r\nc\rd\ne\r\n.\r\n", "x\r", "\r\n.\r\n", ".", "line\r\n.", "a\n.b\r.c\r\n"]
        for text in samples {
            let message = ByteBuffer(string: text)
            var whole = ByteBuffer()
            DotStuffing.encode(message, into: &whole)
            for a in 0...text.utf8.count {
                for b in a...text.utf8.count {
                    var stuffer = DotStuffer()
                    var out = ByteBuffer()
                    for (start, end) in [(0, a), (a, b), (b, text.utf8.count)] {
                        stuffer.encode(message.getSlice(at: start, length: end - start) ?? ByteBuffer(), into: &out)
                    }
                    stuffer.finish(into: &out)
                    XCTAssertEqual(String(buffer: out), String(buffer: whole), "\(text.debugDescription) split at \(a), \(b)")
                }
            }
        }
        var sample = ByteBuffer()
        DotStuffing.encode(ByteBuffer(string: ".a\r\nb\rc\nd"), into: &sample)
        XCTAssertEqual(String(buffer: sample), "..a\r\nb\r\nc\r\nd\r\n.\r\n")
    }
}
