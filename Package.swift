// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Postern",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "postern", targets: ["postern"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
        // Upstream authentication (issue #17): the OAuth 2.0 token request, the RFC 7523 client assertion,
        // certificates read for probe, check and the expiry metric.
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/swift-extras/swift-extras-base64", from: "1.2.0"),
    ],
    targets: [
        // OpenLDAP's client library (libldap, liblber) as a Swift module.
        .systemLibrary(
            name: "CLDAP",
            pkgConfig: "ldap",
            providers: [.apt(["libldap2-dev"])]
        ),
        // RFC 5321 wire format: commands, replies, addresses, line and DATA framing. No I/O.
        .target(
            name: "PosternSMTP",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // The per-connection SMTP state machine. No sockets, files or LDAP.
        .target(
            name: "PosternSession",
            dependencies: ["PosternSMTP"]
        ),
        // Policy model, loading, validation and decisions. Pure but for loading files.
        .target(
            name: "PosternPolicy",
            dependencies: ["PosternSMTP", .product(name: "Yams", package: "Yams")]
        ),
        // LDAP authentication off the event loops.
        .target(
            name: "PosternDirectory",
            dependencies: [
                "CLDAP",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Durable queue, recovery, retry schedule.
        .target(
            name: "PosternSpool",
            dependencies: [
                "PosternSMTP",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Delivery from the spool: the outbound SMTP client with mutual TLS (a state machine and the channel code that
        // drives it), the pure delivery plan (route, classify, expire, bounce) and the code that carries it out;
        // upstream AUTH (PLAIN, LOGIN, XOAUTH2 with OAuth 2.0 client credentials) and `postern probe`'s session.
        .target(
            name: "PosternRelay",
            dependencies: [
                "PosternSMTP",
                "PosternSpool",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "ExtrasBase64", package: "swift-extras-base64"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `postern sink`: a receiving SMTP server on `SMTPSession` that requires client certificates, with faults
        // injected through its rules: the demo upstream, the relay tests' upstream and the benchmark sink.
        .target(
            name: "PosternSink",
            dependencies: [
                "PosternSMTP", "PosternSession",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Helpers for tests only: real slapd, free ports, processes.
        .target(
            name: "PosternTestSupport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Wiring: config, listeners, TLS, delivery, lifecycle.
        .target(
            name: "PosternGateway",
            dependencies: [
                "PosternSMTP", "PosternSession", "PosternPolicy", "PosternDirectory",
                "PosternSpool", "PosternRelay",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // The department device-registration web application (HTTPS, LDAP login, admin approval).
        .target(
            name: "PosternRegistration",
            dependencies: [
                "PosternPolicy", "PosternDirectory", "PosternGateway",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            resources: [.copy("Templates")]
        ),
        .executableTarget(
            name: "postern",
            dependencies: [
                "PosternGateway", "PosternSink", "PosternPolicy", "PosternSMTP", "PosternSpool", "PosternRelay", "PosternRegistration", "PosternSession", "PosternDirectory",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // libFuzzer target for the wire format and the session (scripts/fuzz.sh); plain builds replay files.
        .executableTarget(
            name: "PosternFuzz",
            dependencies: ["PosternSMTP", "PosternSession", .product(name: "NIOCore", package: "swift-nio")]
        ),
        // Benchmark load generator and micro-benchmarks (bench/run.sh).
        .executableTarget(
            name: "postern-load",
            dependencies: [
                "PosternGateway", "PosternPolicy", "PosternSMTP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "PosternSMTPTests", dependencies: ["PosternSMTP"]),
        .testTarget(name: "PosternSessionTests", dependencies: ["PosternSession", "PosternSMTP"]),
        .testTarget(name: "PosternPolicyTests", dependencies: ["PosternPolicy", "PosternSMTP", "PosternTestSupport"]),
        .testTarget(name: "PosternDirectoryTests", dependencies: ["PosternDirectory", "PosternTestSupport"]),
        .testTarget(name: "PosternSpoolTests", dependencies: ["PosternSpool", "PosternTestSupport"]),
        .testTarget(name: "PosternRelayTests", dependencies: ["PosternRelay", "PosternSpool", "PosternSink", "PosternTestSupport"]),
        .testTarget(
            name: "PosternRegistrationTests",
            dependencies: ["PosternRegistration", "PosternGateway", "PosternPolicy", "PosternDirectory", "PosternTestSupport"]
        ),
        .testTarget(
            name: "PosternIntegrationTests",
            dependencies: [
                "PosternGateway", "PosternPolicy", "PosternSession", "PosternSink", "PosternSpool", "PosternRelay", "PosternTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            // The Microsoft 365 stand-in (token endpoint and upstream) the tests run with /usr/bin/python3.
            exclude: ["Fixtures"]
        ),
    ]
)
