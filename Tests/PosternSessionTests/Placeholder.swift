import XCTest

final class PosternSessionTestsPlaceholder: XCTestCase {}
