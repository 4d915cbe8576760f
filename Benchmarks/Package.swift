// swift-tools-version: 6.1
// The hot paths with allocation counts (ordo-one/benchmark): an allocation that sneaks into
// one fails `swift package benchmark thresholds check` (make bench-allocations above).
import PackageDescription

let package = Package(
    name: "ipsec-ha-benchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "ipsec-ha", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "HotPaths",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "IPsecHACore", package: "ipsec-ha"),
                .product(name: "IPsecHASync", package: "ipsec-ha"),
                .product(name: "IPsecHATestKit", package: "ipsec-ha"),
            ],
            path: "Benchmarks/HotPaths",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ]
)
