import XCTest

final class PosternIntegrationTestsPlaceholder: XCTestCase {}
