import XCTest

final class PosternSpoolTestsPlaceholder: XCTestCase {}
