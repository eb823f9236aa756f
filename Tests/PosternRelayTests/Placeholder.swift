import XCTest

final class PosternRelayTestsPlaceholder: XCTestCase {}
