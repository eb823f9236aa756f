import XCTest

final class PosternDirectoryTestsPlaceholder: XCTestCase {}
