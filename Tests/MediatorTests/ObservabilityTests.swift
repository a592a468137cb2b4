import Foundation
import Synchronization
import TestSupport
import Testing
import VGPU

#if canImport(Glibc)
  import Glibc
#endif

/// Issue 18: who uses the vGPU, seen by a real Prometheus server scraping
/// `vgpu-mediator --metrics-listen`, and by `pcitool top` in a real terminal
/// (tmux), while real client processes (Python, through the shims) work.
@Suite(.serialized) struct ObservabilityTests {
  /// Two clients hold memory and have launched kernels; Prometheus scrapes the
  /// mediator; PromQL through its HTTP API gives each client's memory and
  /// launches exactly as NVML and the client's own counters report them.
  /// The Grafana dashboard names only series a real scrape has.
  @Test(.enabled(if: Tools.usable("prometheus"), Tools.missing("prometheus")))
  func prometheusScrapesEachClientsMemoryAndLaunches() throws {
    let prometheusBinary = try Tools.require("prometheus")
    let python = try Clients.requirePython()
    let mediator = try MediatorProcess(arguments: ["--metrics-listen", "127.0.0.1:0"])
    defer { mediator.stop() }
    let port = try #require(try Metrics.port(of: mediator), "no 'metrics listening' line in:\n\(mediator.log)")
    // One after the other: the second's NVML then finds the first holding its memory.
    let a = try Clients.start(python, mediator, hold: 3 << 20, launches: 7, copy: 1 << 16)
    defer { a.finish() }
    let reportA = try a.report()
    let b = try Clients.start(python, mediator, hold: 5 << 20, launches: 11, copy: 1 << 17)
    defer { b.finish() }
    let reportB = try b.report()
    // What each client's NVML listed: itself only, since each has a BAR of its own.
    #expect(reportA.nvml.keys.sorted() == [String(reportA.pid)], "\(reportA.nvml)")
    #expect(reportB.nvml.keys.sorted() == [String(reportB.pid)], "\(reportB.nvml)")

    let prometheus = try PrometheusServer(binary: prometheusBinary, target: "127.0.0.1:\(port)")
    defer { prometheus.stop() }
    // Scraped every 500 ms: wait until a scrape after both clients reported.
    var memory: [String: Double] = [:]
    var launches: [String: Double] = [:]
    let pids = [String(reportA.pid), String(reportB.pid)]
    let seen = try waitUntil(seconds: 30) {
      memory = try prometheus.query("vgpu_process_memory_used_bytes")
      launches = try prometheus.query("vgpu_process_kernel_launches_total")
      return pids.allSatisfy { memory[$0] != nil && launches[$0] != nil }
    }
    #expect(seen, "PromQL never returned both clients: memory \(memory), launches \(launches)\n\(prometheus.log)")
    for report in [reportA, reportB] {
      let pid = String(report.pid)
      #expect(
        memory[pid] == Double(try #require(report.nvml[pid])), "pid \(pid): PromQL \(memory), NVML \(report.nvml)")
      #expect(memory[pid] == Double(report.statistics["bytes_allocated"] ?? 0))
      #expect(launches[pid] == Double(report.launches), "pid \(pid): PromQL \(launches)")
      #expect(launches[pid] == Double(report.statistics["launches"] ?? 0))
    }
    // The device's memory is the clients' sum; its launches at least theirs.
    let used = try prometheus.query("vgpu_device_memory_used_bytes").values.first
    #expect(used == memory.values.reduce(0, +))
    let copied = try prometheus.query("sum by (pid) (vgpu_process_copy_bytes_total{direction=\"to_device\"})")
    #expect(copied[String(reportA.pid)] == Double(1 << 16) && copied[String(reportB.pid)] == Double(1 << 17))
    let buckets = try prometheus.query("sum(vgpu_device_command_duration_seconds_count{opcode=\"launch\"})")
    #expect((buckets.values.first ?? 0) >= 18)

    // Every series the dashboard uses is in a real scrape.
    let scrape = try HTTP.get(port: port, path: "/metrics")
    #expect(scrape.status == 200 && scrape.headers.lowercased().contains("content-type: text/plain; version=0.0.4"))
    let exposed = Metrics.names(in: scrape.body)
    let dashboard = try String(
      contentsOf: Paths.packageRoot.appendingPathComponent("docs/grafana/vgpu.json"), encoding: .utf8)
    _ = try JSONSerialization.jsonObject(with: Data(dashboard.utf8))
    let used_ = Metrics.names(referencedBy: dashboard)
    #expect(!used_.isEmpty)
    for name in used_ { #expect(exposed.contains(name), "the dashboard uses \(name), which no scrape has") }
  }

  /// `pcitool top` in a 160×40 tmux window shows both clients of a shared
  /// BAR (as a VM's processes share theirs) with their command, memory and
  /// nonzero rates; `q` quits it. Then `--once --json`, field by field.
  @Test(.enabled(if: Tools.usable("tmux"), Tools.missing("tmux")))
  func topShowsBothClientsLiveAndAsJSON() throws {
    let tmux = try Tools.require("tmux")
    let python = try Clients.requirePython()
    let mediator = try MediatorProcess(arguments: ["--shared-bar"])
    defer { mediator.stop() }
    let a = try Clients.start(python, mediator, hold: 3 << 20, launches: 2, copy: 1 << 16, busy: true)
    let b = try Clients.start(python, mediator, hold: 5 << 20, launches: 2, copy: 1 << 17, busy: true)
    defer {
      a.finish()
      b.finish()
    }
    let pids = [try a.report().pid, try b.report().pid]
    let commands = pids.map { Clients.command(of: $0) }
    let pcitool = MediatorProcess.binaries.appendingPathComponent("pcitool").path

    let server = "vgpu-top-\(getpid())"
    func run(_ arguments: [String]) -> (status: Int32, output: String) { Tools.run(tmux, ["-L", server] + arguments) }
    defer { _ = run(["kill-server"]) }
    let started = run([
      "new-session", "-d", "-x", "160", "-y", "40", "-s", "top", "\(pcitool) top \(mediator.spec) --interval 0.5",
    ])
    try #require(started.status == 0, "tmux new-session: \(started.output)")
    var screen = ""
    let shown = waitUntil(seconds: 20) {
      screen = run(["capture-pane", "-p", "-t", "top"]).output
      return pids.allSatisfy { pid in Self.row(of: pid, in: screen).map { Self.launchRate(in: $0) > 0 } ?? false }
    }
    #expect(shown, "both clients with launches/s > 0 never appeared:\n\(screen)")
    #expect(screen.contains("vGPU Reference H100 80GB") && screen.contains("MEM [") && screen.contains("UTIL ["))
    #expect(screen.contains("PID") && screen.contains("COMMAND") && screen.contains("LAUNCH/S"))
    for (pid, hold) in zip(pids, ["3.0 MiB", "5.0 MiB"]) {
      let row = Self.row(of: pid, in: screen) ?? ""
      // Memory: the held buffer plus the counters (256 B) and the copy scratch; shown rounded.
      #expect(row.contains(String(commands[pids.firstIndex(of: pid)!].prefix(16))), "\(row)")
      #expect(row.contains(hold) || row.contains(hold.replacingOccurrences(of: ".0", with: ".1")), "\(row)")
    }
    // pcitool itself is not listed.
    #expect(!screen.contains(" pcitool "), "\(screen)")
    _ = run(["send-keys", "-t", "top", "q"])
    #expect(waitUntil(seconds: 5) { run(["has-session", "-t", "top"]).status != 0 }, "q did not quit top")

    // --once --json: one document, field by field.
    let once = Tools.run(pcitool, ["top", mediator.spec, "--once", "--json", "--interval", "0.5"])
    try #require(once.status == 0, "\(once.output)")
    let frame = try #require(try JSONSerialization.jsonObject(with: Data(once.output.utf8)) as? [String: Any])
    #expect(frame["device"] as? String == mediator.spec)
    #expect(frame["name"] as? String == "vGPU Reference H100 80GB")
    #expect(frame["memoryTotalBytes"] as? UInt64 == 8 << 30)
    #expect(frame["queuePairs"] as? Int == 8)
    #expect((frame["intervalSeconds"] as? Double).map { $0 >= 0.5 && $0 < 2 } == true)
    #expect((frame["utilization"] as? Double).map { $0 > 0 && $0 <= 1 } == true)
    #expect((frame["launchesPerSecond"] as? Double ?? 0) > 0 && (frame["copyBytesPerSecond"] as? Double ?? 0) > 0)
    let processes = try #require(frame["processes"] as? [[String: Any]])
    #expect(Set(processes.compactMap { $0["pid"] as? UInt32 }) == Set(pids))
    var sum: UInt64 = 0
    for p in processes {
      let pid = try #require(p["pid"] as? UInt32)
      let memory = try #require(p["memoryBytes"] as? UInt64)
      sum += memory
      #expect(p["command"] as? String == commands[pids.firstIndex(of: pid)!])
      // libvgpu claims two, the NVML shim its own.
      #expect((p["queuePairs"] as? Int).map { $0 >= 2 } == true)
      #expect(memory >= (pid == pids[0] ? 3 << 20 : 5 << 20) && memory < (pid == pids[0] ? 4 << 20 : 6 << 20))
      #expect((p["launches"] as? UInt64 ?? 0) >= 2 && (p["launchesPerSecond"] as? Double ?? 0) > 0)
      #expect((p["bytesToDevice"] as? UInt64 ?? 0) > 0 && (p["bytesFromDevice"] as? UInt64 ?? 0) > 0)
      #expect((p["copyToDeviceBytesPerSecond"] as? Double ?? 0) > 0)
      #expect((p["copyFromDeviceBytesPerSecond"] as? Double ?? 0) > 0)
      #expect((p["busySeconds"] as? Double ?? 0) > 0)
      #expect((p["utilization"] as? Double).map { $0 >= 0 && $0 <= 1 } == true)
    }
    #expect(frame["memoryUsedBytes"] as? UInt64 == sum)
  }

  /// Off unless asked; a bad address is one line and exit status 2; an
  /// address in use says so and exits 1; an idle endpoint costs no CPU.
  @Test func metricsEndpointOptionsAndIdleCost() throws {
    for bad in ["nonsense", "127.0.0.1:99999", "[::1]9400", "example.com:9400", ""] {
      let r = Tools.run(
        MediatorProcess.binaries.appendingPathComponent("vgpu-mediator").path,
        [
          "--socket", "/dev/shm/vgpu-bad-\(getpid()).sock", "--metrics-listen", bad,
        ])
      #expect(r.status == 2, "'\(bad)': \(r.output)")
      #expect(r.output.split(separator: "\n").count == 1 && r.output.contains("--metrics-listen"), "\(r.output)")
    }
    // Port in use: the mediator says which and stops.
    let holder = try Metrics.listener()
    defer { close(holder.fd) }
    let busy = Tools.run(
      MediatorProcess.binaries.appendingPathComponent("vgpu-mediator").path,
      [
        "--socket", "/dev/shm/vgpu-busy-\(getpid()).sock", "--metrics-listen", "\(holder.port)",
      ])
    #expect(access("/dev/shm/vgpu-busy-\(getpid()).sock", F_OK) != 0, "the mediator left its socket behind")
    #expect(
      busy.status == 1 && busy.output.contains("cannot serve metrics on 127.0.0.1:\(holder.port)"), "\(busy.output)")

    let mediator = try MediatorProcess(arguments: ["--metrics-listen", ":0"])
    defer { mediator.stop() }
    let port = try #require(try Metrics.port(of: mediator), "\(mediator.log)")
    #expect(mediator.log.contains("127.0.0.1:\(port)"), "loopback by default: \(mediator.log)")
    #expect(try HTTP.get(port: port, path: "/metrics").body.contains("vgpu_device_memory_total_bytes"))
    usleep(500_000)
    let before = mediator.cpuTicks
    sleep(3)
    let used = mediator.cpuTicks - before
    #expect(used >= 0 && used <= 3, "idle mediator with metrics used \(used) ticks in 3 s")
  }

  /// A socket mediator's serving threads in its metrics: a series per
  /// thread, with the BARs it serves (a connected process's among them) and
  /// its CPU time, which grows while it serves.
  @Test func servingThreadsAreInTheMetrics() throws {
    let mediator = try MediatorProcess(arguments: ["--metrics-listen", ":0", "--serving-threads", "2"])
    defer { mediator.stop() }
    let port = try #require(try Metrics.port(of: mediator), "\(mediator.log)")
    /// `NAME{thread="i"} VALUE` lines of one scrape, by thread.
    func byThread(_ name: String) throws -> [String: Double] {
      var found: [String: Double] = [:]
      for line in try HTTP.get(port: port, path: "/metrics").body.split(separator: "\n")
      where line.hasPrefix(name + "{thread=\"") {
        let thread = line.dropFirst(name.count + 9).prefix { $0 != "\"" }
        found[String(thread)] = line.split(separator: " ").last.flatMap { Double($0) }
      }
      return found
    }
    #expect(try byThread("vgpu_serving_thread_devices") == ["0": 0, "1": 0])
    let client = try Device.open(mediator.spec)
    defer { client.close() }
    try client.nops(200_000)
    let devices = try byThread("vgpu_serving_thread_devices")
    #expect(devices.count == 2 && devices.values.reduce(0, +) == 1, "\(devices)")
    let cpu = try byThread("vgpu_serving_thread_cpu_seconds_total")
    #expect(cpu.count == 2 && cpu.values.reduce(0, +) > 0, "\(cpu)")
  }

  static func row(of pid: UInt32, in screen: String) -> String? {
    screen.split(separator: "\n").map(String.init).first {
      $0.split(separator: " ").first.map { $0 == "\(pid)" } ?? false
    }
  }

  /// The LAUNCH/S column: the fourth number-like field after the command (memory takes two).
  static func launchRate(in row: String) -> Double {
    let fields = row.split(separator: " ").map(String.init)
    guard let unit = fields.firstIndex(where: { $0 == "B" || $0.hasSuffix("iB") }), unit + 1 < fields.count else {
      return 0
    }
    return Double(fields[unit + 1]) ?? 0
  }
}

/// Debian tools the tests drive (tools/setup installs them).
enum Tools {
  static func path(_ name: String) -> String? {
    ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin"].map { "\($0)/\(name)" }.first {
      FileManager.default.isExecutableFile(atPath: $0)
    }
  }

  static var inCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

  /// Run the test when the tool is there, and always in CI, where its absence must fail.
  static func usable(_ name: String) -> Bool { path(name) != nil || inCI }

  static func missing(_ name: String) -> Comment {
    "\(name) is not installed: tools/setup installs it (apt-get install \(name)); skipped outside CI only"
  }

  static func require(_ name: String) throws -> String {
    try #require(path(name), "\(name) is not installed: run tools/setup (apt-get install \(name))")
  }

  /// Runs to completion (killed after 60 s), standard output and error
  /// together. posix_spawn and waitpid rather than Foundation's Process:
  /// tmux's client daemonizes a server, and Process then never saw the client exit.
  static func run(_ executable: String, _ arguments: [String]) -> (status: Int32, output: String) {
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-tool-\(UUID().uuidString)").path
    defer { unlink(out) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
    guard spawned == 0 else { return (-1, "\(executable): posix_spawn: \(String(cString: strerror(spawned)))") }
    var status: Int32 = 0
    let exited = waitUntil(seconds: 60) { waitpid(pid, &status, WNOHANG) == pid }
    if !exited {
      kill(pid, SIGKILL)
      waitpid(pid, &status, 0)
    }
    let output = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
    // WIFEXITED / WEXITSTATUS, which Swift does not import.
    let code: Int32 = exited && status & 0x7f == 0 ? (status >> 8) & 0xff : -1
    return (code, output)
  }
}

/// The Python client (clients/busy_client.py) as a process whose stdin ends it.
final class Clients: @unchecked Sendable {
  struct Report {
    var pid: UInt32
    var launches: Int
    var statistics: [String: UInt64]
    var nvml: [String: UInt64]
  }

  let process = Process()
  private let input = Pipe()
  private let lines = Mutex<[String]>([])

  static func requirePython() throws -> String {
    try #require(
      FileManager.default.isExecutableFile(atPath: Paths.python.path), "no \(Paths.python.path): run tools/setup")
    for lib in ["libvgpu.so", "libnvidia-ml.so.1", "libvgpucore.so"] {
      try #require(
        FileManager.default.fileExists(atPath: Paths.shims.appendingPathComponent(lib).path),
        "\(lib) missing in \(Paths.shims.path): run tools/test, which builds the shims before swift test")
    }
    return Paths.python.path
  }

  static func start(
    _ python: String, _ mediator: MediatorProcess, hold: Int, launches: Int, copy: Int, busy: Bool = false
  ) throws -> Clients {
    let script = Paths.packageRoot.appendingPathComponent("Tests/MediatorTests/clients/busy_client.py").path
    return try Clients(python, [script, "\(hold)", "\(launches)", "\(copy)"] + (busy ? ["--busy"] : []), mediator)
  }

  private init(_ python: String, _ arguments: [String], _ mediator: MediatorProcess) throws {
    process.executableURL = URL(fileURLWithPath: python)
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env["LD_LIBRARY_PATH"] = Paths.shims.path
    env["VGPU_DEVICE"] = mediator.spec
    process.environment = Sanitizer.clientEnvironment(env, executable: python)
    process.standardInput = input
    let out = Pipe()
    process.standardOutput = out
    process.standardError = out
    out.fileHandleForReading.readabilityHandler = { [weak self] h in
      let text = String(decoding: h.availableData, as: UTF8.self)
      self?.lines.withLock { $0 += text.split(separator: "\n").map(String.init) }
    }
    try process.run()
  }

  /// Its JSON line (after it has done its work and asked NVML).
  func report() throws -> Report {
    var line: String?
    _ = waitUntil(seconds: 60) {
      line = lines.withLock { $0.first { $0.hasPrefix("{") } }
      return line != nil || !process.isRunning
    }
    let text = try #require(line, "the client reported nothing: \(lines.withLock { $0 })")
    let json = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    func numbers(_ key: String) -> [String: UInt64] {
      ((json[key] as? [String: Any]) ?? [:]).compactMapValues { ($0 as? NSNumber)?.uint64Value }
    }
    return Report(
      pid: try #require(json["pid"] as? UInt32), launches: try #require(json["launches"] as? Int),
      statistics: numbers("statistics"), nvml: numbers("nvml"))
  }

  /// Tells it to stop (a line on stdin) and waits; kills it if it does not.
  func finish() {
    guard process.isRunning else { return process.waitUntilExit() }
    try? input.fileHandleForWriting.write(contentsOf: Data("exit\n".utf8))
    if !waitUntil(seconds: 10, { !process.isRunning }) { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
  }

  deinit {
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
  }

  static func command(of pid: UInt32) -> String {
    ((try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "?").trimmingCharacters(in: .newlines)
  }
}

/// A real Prometheus server on a free loopback port, with a generated
/// configuration and a storage folder of its own, removed when it stops.
final class PrometheusServer {
  let process = Process()
  let port: UInt16
  let directory: URL
  private let logFile: URL

  init(binary: String, target: String) throws {
    directory = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-prometheus-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let config = directory.appendingPathComponent("prometheus.yml")
    try """
    global:
      scrape_interval: 500ms
      evaluation_interval: 1s
    scrape_configs:
      - job_name: vgpu
        static_configs:
          - targets: ['\(target)']
    """.write(to: config, atomically: true, encoding: .utf8)
    let listener = try Metrics.listener()
    port = listener.port
    close(listener.fd)
    logFile = directory.appendingPathComponent("log")
    FileManager.default.createFile(atPath: logFile.path, contents: nil)
    let log = try FileHandle(forWritingTo: logFile)
    defer { try? log.close() }
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = [
      "--config.file=\(config.path)", "--storage.tsdb.path=\(directory.appendingPathComponent("data").path)",
      "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
    ]
    process.standardOutput = log
    process.standardError = log
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let ready = waitUntil(seconds: 30) { (try? HTTP.get(port: self.port, path: "/-/ready").status) == 200 }
    if !ready {
      stop()
      throw ObservabilityFailure("prometheus did not become ready on 127.0.0.1:\(port):\n\(self.log)")
    }
  }

  var log: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

  /// An instant PromQL query through the HTTP API: value by the series' pid
  /// label (or "" for series without one).
  func query(_ promql: String) throws -> [String: Double] {
    var allowed = CharacterSet.alphanumerics
    allowed.insert(charactersIn: "-._~")
    let encoded = promql.addingPercentEncoding(withAllowedCharacters: allowed) ?? promql
    let reply = try HTTP.get(port: port, path: "/api/v1/query?query=\(encoded)")
    guard reply.status == 200,
      let json = try JSONSerialization.jsonObject(with: Data(reply.body.utf8)) as? [String: Any],
      json["status"] as? String == "success", let data = json["data"] as? [String: Any],
      let result = data["result"] as? [[String: Any]]
    else { throw ObservabilityFailure("query \(promql): HTTP \(reply.status): \(reply.body)") }
    var values: [String: Double] = [:]
    for series in result {
      let labels = series["metric"] as? [String: String] ?? [:]
      let value = (series["value"] as? [Any])?.last as? String
      values[labels["pid"] ?? ""] = value.flatMap(Double.init)
    }
    return values
  }

  func stop() {
    if process.isRunning {
      process.terminate()
      if !waitUntil(seconds: 10, { !process.isRunning }) { kill(process.processIdentifier, SIGKILL) }
    }
    process.waitUntilExit()
    try? FileManager.default.removeItem(at: directory)
  }

  deinit { stop() }
}

/// The metrics endpoint as the tests find and read it.
enum Metrics {
  /// The port from the mediator's "metrics listening" log line.
  static func port(of mediator: MediatorProcess) throws -> UInt16? { mediator.metricsPort() }

  /// A socket listening on a free loopback port.
  static func listener() throws -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, length) == 0 && listen(fd, 1) == 0 && getsockname(fd, $0, &length) == 0
      }
    }
    guard fd >= 0, bound else { throw ObservabilityFailure("no free loopback port: errno \(errno)") }
    return (fd, UInt16(bigEndian: address.sin_port))
  }

  /// Metric names in an exposition (histograms by their base name too).
  static func names(in exposition: String) -> Set<String> {
    var names = Set<String>()
    for line in exposition.split(separator: "\n") where !line.hasPrefix("#") {
      let name = String(line.prefix { $0 != "{" && $0 != " " })
      names.insert(name)
      for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
        names.insert(String(name.dropLast(suffix.count)))
      }
    }
    return names
  }

  /// Every `vgpu_…` name in a dashboard's queries.
  static func names(referencedBy dashboard: String) -> Set<String> {
    var names = Set<String>()
    var rest = dashboard[...]
    while let r = rest.range(of: #"vgpu_[a-z_]+"#, options: .regularExpression) {
      names.insert(String(rest[r]))
      rest = rest[r.upperBound...]
    }
    return names
  }
}

struct ObservabilityFailure: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}
