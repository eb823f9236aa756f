import XCTest

final class PosternPolicyTestsPlaceholder: XCTestCase {}
