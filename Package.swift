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
        // The audit log's rotated files are gzip (issue #18): written on rotation, read by postern report.
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
    ],
    targets: [
        // OpenLDAP's client library (libldap, liblber) as a Swift module.
        .systemLibrary(
            name: "CLDAP",
            pkgConfig: "ldap",
            providers: [.apt(["libldap2-dev"])]
        ),
        // One of each piece the other modules share: the config reader and its issues (file:line, fix), sizes, the
        // durable file write, queue ids, the audit log (its rotation and `postern report`'s reckoning) and server TLS.
        // Depends on no other Postern module.
        .target(
            name: "PosternCore",
            dependencies: [
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
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
        // Policy model, loading, validation and decisions, pure but for loading files; the policy in force
        // (`PolicyStore`, reloaded and swapped whole), the session's rules on it and the message rate limits.
        .target(
            name: "PosternPolicy",
            dependencies: [
                "PosternCore", "PosternSMTP", "PosternSession", "PosternDirectory",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // LDAP authentication off the event loops; group names in configuration (`GroupReference`).
        .target(
            name: "PosternDirectory",
            dependencies: [
                "CLDAP", "PosternCore",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // Durable queue, recovery, retry schedule.
        .target(
            name: "PosternSpool",
            dependencies: [
                "PosternCore", "PosternSMTP",
                .product(name: "Crypto", package: "swift-crypto"),
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
                "PosternCore", "PosternSMTP",
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
        // The SMTP listener and its connection handler: sockets, TLS, PROXY, backpressure, a thin handler over
        // `SMTPSession` and `ServerConnectionStateMachine`; the one event-loop group's accept and session loops.
        .target(
            name: "PosternListener",
            dependencies: [
                "PosternCore", "PosternSMTP", "PosternSession", "PosternPolicy",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Wiring and lifecycle: postern.yaml, which listeners, delivery target, relay, admin endpoint and services
        // `postern serve` runs (`GatewayServices`), their metrics, reload and shutdown.
        .target(
            name: "PosternGateway",
            dependencies: [
                "PosternCore", "PosternSMTP", "PosternSession", "PosternPolicy", "PosternDirectory", "PosternListener",
                "PosternSpool", "PosternRelay", "PosternRegistration",
                .product(name: "Hummingbird", package: "hummingbird"),
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
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // The department device-registration web application (HTTPS, LDAP login, admin approval), on the policy
        // store, directory login and event loops `postern serve` hands it; it does not depend on the gateway.
        .target(
            name: "PosternRegistration",
            dependencies: [
                "PosternCore", "PosternPolicy", "PosternDirectory", "PosternListener", "PosternSession", "PosternSMTP",
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
                "PosternCore", "PosternGateway", "PosternListener", "PosternSink", "PosternPolicy", "PosternSMTP", "PosternSpool", "PosternRelay",
                "PosternRegistration", "PosternSession", "PosternDirectory",
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
                "PosternPolicy", "PosternSMTP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "PosternCoreTests",
            dependencies: [
                "PosternCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .testTarget(name: "PosternSMTPTests", dependencies: ["PosternSMTP"]),
        .testTarget(name: "PosternSessionTests", dependencies: ["PosternSession", "PosternSMTP"]),
        .testTarget(name: "PosternPolicyTests", dependencies: ["PosternPolicy", "PosternSMTP", "PosternTestSupport"]),
        .testTarget(name: "PosternDirectoryTests", dependencies: ["PosternDirectory", "PosternTestSupport"]),
        .testTarget(name: "PosternSpoolTests", dependencies: ["PosternCore", "PosternSpool", "PosternTestSupport"]),
        .testTarget(name: "PosternRelayTests", dependencies: ["PosternCore", "PosternRelay", "PosternSpool", "PosternSink", "PosternTestSupport"]),
        .testTarget(
            name: "PosternRegistrationTests",
            dependencies: ["PosternCore", "PosternRegistration", "PosternGateway", "PosternPolicy", "PosternDirectory", "PosternTestSupport"]
        ),
        .testTarget(
            name: "PosternIntegrationTests",
            dependencies: [
                "PosternCore", "PosternGateway", "PosternListener", "PosternPolicy", "PosternSession", "PosternSink", "PosternSpool", "PosternRelay",
                "PosternTestSupport",
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
