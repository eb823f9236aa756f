import XCTest

final class PosternSMTPTestsPlaceholder: XCTestCase {}
