import CoreMetrics
import DeviceAccess
import Foundation
import Prometheus
import Synchronization
import VGPUDevice
import VGPUProtocol

/// The device's figures in Prometheus's text exposition format, collected
/// from one `ReferenceDevice.snapshot()` per scrape: the serving thread
/// never touches a metric object, and between scrapes nothing here runs.
///
/// Counters and gauges live in a swift-prometheus registry, set from the
/// snapshot's absolute values (scrapes are serialised, so a reader never sees
/// a counter between its reset and its new value). The latency histograms are
/// bucketed by the device itself, without allocating, so they are written
/// straight from the snapshot's buckets: swift-prometheus's histograms take
/// observations one at a time.
final class DeviceMetrics: Sendable {
  /// One device whose series this endpoint serves: a mediator's only one,
  /// or one VM of several (`--vm-bar`), each with its own series.
  struct Source: Sendable {
    /// The labels of every series of this device: `device` (the BAR file,
    /// or the socket), and `vm` (its name) where the mediator serves several VMs.
    var labels: [(String, String)]
    /// What it reports (name, uuid, bus id) in `vgpu_device_info`.
    var configuration: ReferenceDeviceConfiguration
    /// One snapshot of the device: its BAR's, or all client BARs' together.
    var snapshot: @Sendable () -> DeviceSnapshot
  }

  let registry = PrometheusCollectorRegistry()
  private let sources: [Source]
  /// The threads serving host processes' BARs (a socket mediator's), whose
  /// CPU time and load are exported: whether they keep up is what a crowd
  /// of clients waits on.
  private let servingPool: ServingPool?
  /// Whether the clients are in a VM: their pids are the guest's, and have no name here.
  private let vm: Bool
  private let state: SanitizerVisibleMutex<State>
  /// How long each scrape takes, through swift-metrics (bootstrapped to the same registry).
  private let scrapeTimer: CoreMetrics.Timer

  private struct State {
    /// Per source, the last scrape's snapshot time and busy total, for the utilization gauge.
    var previous: [(takenAt: UInt64, busy: UInt64)?]
    /// The series of each process seen at the last scrape, to drop them when it leaves.
    var processSeries: [ProcessKey: ProcessSeries] = [:]
  }

  private struct ProcessKey: Hashable {
    /// The source (device) the process uses: two VMs' guests may share a pid.
    var source: Int
    var pid: UInt32
    var command: String
  }

  /// One device, labelled `device=deviceLabel`.
  convenience init(
    configuration c: ReferenceDeviceConfiguration, deviceLabel: String, vm: Bool, servingPool: ServingPool? = nil,
    snapshot: @escaping @Sendable () -> DeviceSnapshot
  ) {
    self.init(
      sources: [Source(labels: [("device", deviceLabel)], configuration: c, snapshot: snapshot)], vm: vm,
      servingPool: servingPool)
  }

  /// Several devices (VMs) on one endpoint, each with the labels of its source.
  init(sources: [Source], vm: Bool, servingPool: ServingPool? = nil) {
    self.sources = sources
    self.servingPool = servingPool
    self.vm = vm
    state = SanitizerVisibleMutex(State(previous: Array(repeating: nil, count: sources.count)))
    MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    scrapeTimer = CoreMetrics.Timer(
      label: "vgpu_metrics_scrape_duration_seconds", preferredDisplayUnit: .seconds)
    for source in sources {
      let c = source.configuration
      registry.makeGauge(
        descriptor: Names.info,
        labels: source.labels + [
          ("name", c.name), ("uuid", c.identity.uuidString), ("pci_bus_id", c.pciBusID), ("mode", vm ? "vm" : "host"),
        ]
      ).set(to: 1)
    }
  }

  /// One scrape: a snapshot of each device, the registry brought up to date, the exposition text.
  func render() -> [UInt8] {
    let start = DispatchTime.now().uptimeNanoseconds
    let text = state.withLock { state -> [UInt8] in
      let snapshots = sources.map { $0.snapshot() }
      for (i, snapshot) in snapshots.enumerated() { update(&state, snapshot, source: i) }
      if let servingPool { updateServing(servingPool) }
      dropDepartedProcesses(&state, snapshots)
      var buffer = registry.emitToBuffer()
      appendLatency(snapshots, to: &buffer)
      return buffer
    }
    scrapeTimer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - start))
    return text
  }

  private func update(_ state: inout State, _ s: DeviceSnapshot, source: Int) {
    let labels = sources[source].labels
    gauge(Names.memoryTotal, labels, s.memoryTotal)
    gauge(Names.memoryUsed, labels, s.memoryUsed)
    gauge(Names.queuePairs, labels, UInt64(s.queuePairs))
    gauge(Names.queuePairsInUse, labels, UInt64(s.queuePairsInUse))
    gauge(Names.processes, labels, UInt64(s.processes.count))
    counter(Names.commands, labels, s.totals.commands)
    counter(Names.launches, labels, s.totals.launches)
    counter(Names.allocations, labels, s.totals.allocations)
    counter(Names.moduleLoads, labels, s.activity.moduleLoads)
    seconds(Names.busy, labels, s.totals.busyNanoseconds)
    seconds(Names.kernel, labels, s.activity.kernelNanoseconds)
    for (direction, bytes) in Self.directions(s.activity) {
      counter(Names.copyBytes, labels + [("direction", direction)], bytes)
    }
    // Every status has its series from the start, at 0 until a command fails with it:
    // a query over errors then finds them before the first one.
    let failures = Dictionary(s.failures.map { ($0.status, $0.count) }) { a, _ in a }
    for status in CommandStatus.allCases where status != .success {
      counter(Names.errors, labels + [("status", Self.name(of: status))], failures[status] ?? 0)
    }
    // Busy time over wall time since the last scrape (0 at the first): the
    // share of time the device spent executing commands, as NVML's utilization.
    var utilization = 0.0
    if let previous = state.previous[source], s.takenAt > previous.takenAt {
      utilization = Double(s.totals.busyNanoseconds &- previous.busy) / Double(s.takenAt - previous.takenAt)
    }
    registry.makeGauge(descriptor: Names.utilization, labels: labels).set(to: min(1, max(0, utilization)))
    state.previous[source] = (s.takenAt, s.totals.busyNanoseconds)

    for p in s.processes {
      let key = processKey(p.pid, source: source)
      let series =
        state.processSeries[key] ?? ProcessSeries(registry, labels + [("pid", "\(p.pid)"), ("command", key.command)])
      state.processSeries[key] = series
      series.update(p)
    }
  }

  /// Each serving thread's CPU time and devices, labelled by its index.
  private func updateServing(_ pool: ServingPool) {
    let devices = pool.devicesPerThread
    for (i, cpu) in pool.cpuNanoseconds.enumerated() {
      let labels = [("thread", "\(i)")]
      seconds(Names.servingCPU, labels, cpu)
      gauge(Names.servingDevices, labels, UInt64(i < devices.count ? devices[i] : 0))
    }
  }

  private func processKey(_ pid: UInt32, source: Int) -> ProcessKey {
    ProcessKey(source: source, pid: pid, command: vm ? "?" : ProcessNames.command(of: pid) ?? "?")
  }

  /// Unregisters the series of processes no snapshot lists any more.
  private func dropDepartedProcesses(_ state: inout State, _ snapshots: [DeviceSnapshot]) {
    var seen = Set<ProcessKey>()
    for (i, s) in snapshots.enumerated() {
      for p in s.processes { seen.insert(processKey(p.pid, source: i)) }
    }
    for (key, series) in state.processSeries where !seen.contains(key) {
      series.unregister(from: registry)
      state.processSeries[key] = nil
    }
  }

  /// A status as the code and PROTOCOL.md §15 name it ("outOfMemory"): its
  /// `description` is a phrase for people, not a label value.
  static func name(of status: CommandStatus) -> String {
    String(String(reflecting: status).split(separator: ".").last ?? "\(status.rawValue)")
  }

  static func directions(_ a: ActivityCounters) -> [(String, UInt64)] {
    [("to_device", a.bytesToDevice), ("from_device", a.bytesFromDevice), ("device_to_device", a.bytesWithinDevice)]
  }

  private func gauge(_ name: MetricNameDescriptor, _ labels: [(String, String)], _ value: UInt64) {
    registry.makeGauge(descriptor: name, labels: labels).set(to: Double(value))
  }

  private func counter(_ name: MetricNameDescriptor, _ labels: [(String, String)], _ value: UInt64) {
    Self.set(registry.makeCounter(descriptor: name, labels: labels), value)
  }

  private func seconds(_ name: MetricNameDescriptor, _ labels: [(String, String)], _ nanoseconds: UInt64) {
    Self.set(registry.makeCounter(descriptor: name, labels: labels), seconds: nanoseconds)
  }

  /// A counter set to an absolute value the device counted (the device's
  /// counters only grow, so the exported one does too).
  static func set(_ counter: Prometheus.Counter, _ value: UInt64) {
    counter.reset()
    counter.increment(by: Int64(clamping: value))
  }

  static func set(_ counter: Prometheus.Counter, seconds nanoseconds: UInt64) {
    counter.reset()
    if nanoseconds > 0 { counter.increment(by: Double(nanoseconds) / 1e9) }
  }

  /// `vgpu_device_command_duration_seconds`, one histogram per opcode, with
  /// cumulative buckets as the exposition format wants them.
  private func appendLatency(_ snapshots: [DeviceSnapshot], to buffer: inout [UInt8]) {
    let name = Names.latency
    var text = "# HELP \(name) \(Names.latencyHelp)\n# TYPE \(name) histogram\n"
    for (s, source) in zip(snapshots, sources) {
      appendLatency(s, labels: source.labels, to: &text)
    }
    buffer.append(contentsOf: text.utf8)
  }

  private func appendLatency(_ s: DeviceSnapshot, labels deviceLabels: [(String, String)], to text: inout String) {
    let name = Names.latency
    let bounds = s.latencyBucketBounds.map { Self.seconds($0) } + ["+Inf"]
    let device = deviceLabels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",")
    for h in s.latency {
      let labels = "\(device),opcode=\"\(Self.escape(h.opcode))\""
      var cumulative: UInt64 = 0
      for (bound, count) in zip(bounds, h.buckets) {
        cumulative &+= count
        text += "\(name)_bucket{\(labels),le=\"\(bound)\"} \(cumulative)\n"
      }
      text += "\(name)_sum{\(labels)} \(Self.seconds(h.sumNanoseconds))\n"
      text += "\(name)_count{\(labels)} \(cumulative)\n"
    }
  }

  /// Nanoseconds as seconds in the shortest decimal that reads back exactly enough ("2.5e-06").
  static func seconds(_ nanoseconds: UInt64) -> String { "\(Double(nanoseconds) / 1e9)" }

  /// A label value as the exposition format quotes it: backslash, quote and newline escaped.
  static func escape(_ value: String) -> String {
    value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
      .replacingOccurrences(of: "\n", with: "\\n")
  }
}

/// One client process's series.
private final class ProcessSeries {
  let memory: Prometheus.Gauge
  let queuePairs: Prometheus.Gauge
  let launches: Prometheus.Counter
  let commands: Prometheus.Counter
  let errors: Prometheus.Counter
  let moduleLoads: Prometheus.Counter
  let busy: Prometheus.Counter
  let kernel: Prometheus.Counter
  let copies: [Prometheus.Counter]

  init(_ registry: PrometheusCollectorRegistry, _ labels: [(String, String)]) {
    memory = registry.makeGauge(descriptor: Names.processMemory, labels: labels)
    queuePairs = registry.makeGauge(descriptor: Names.processQueuePairs, labels: labels)
    launches = registry.makeCounter(descriptor: Names.processLaunches, labels: labels)
    commands = registry.makeCounter(descriptor: Names.processCommands, labels: labels)
    errors = registry.makeCounter(descriptor: Names.processErrors, labels: labels)
    moduleLoads = registry.makeCounter(descriptor: Names.processModuleLoads, labels: labels)
    busy = registry.makeCounter(descriptor: Names.processBusy, labels: labels)
    kernel = registry.makeCounter(descriptor: Names.processKernel, labels: labels)
    copies = ["to_device", "from_device", "device_to_device"].map {
      registry.makeCounter(descriptor: Names.processCopyBytes, labels: labels + [("direction", $0)])
    }
  }

  func update(_ p: ProcessSnapshot) {
    memory.set(to: Double(p.record.process.bytesAllocated))
    queuePairs.set(to: Double(p.queuePairs))
    DeviceMetrics.set(launches, p.record.process.launches)
    DeviceMetrics.set(commands, p.record.commands)
    DeviceMetrics.set(errors, p.activity.failedCommands)
    DeviceMetrics.set(moduleLoads, p.activity.moduleLoads)
    DeviceMetrics.set(busy, seconds: p.record.process.busyNanoseconds)
    DeviceMetrics.set(kernel, seconds: p.activity.kernelNanoseconds)
    for (counter, (_, bytes)) in zip(copies, DeviceMetrics.directions(p.activity)) { DeviceMetrics.set(counter, bytes) }
  }

  func unregister(from registry: PrometheusCollectorRegistry) {
    for g in [memory, queuePairs] { registry.unregisterGauge(g) }
    for c in [launches, commands, errors, moduleLoads, busy, kernel] + copies { registry.unregisterCounter(c) }
  }
}

/// The names and help texts of every series (docs/METRICS.md lists them; the
/// Grafana dashboard in docs/grafana uses them).
enum Names {
  static func make(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(namespace: "vgpu", metricName: name, unitName: unit, helpText: help)
  }
  static var info: MetricNameDescriptor {
    make("device", "info", "The device a mediator serves (always 1); mode is host or vm.")
  }
  static var memoryTotal: MetricNameDescriptor { make("device_memory_total", "bytes", "Device memory.") }
  static var memoryUsed: MetricNameDescriptor {
    make("device_memory_used", "bytes", "Device memory allocated by all clients.")
  }
  static var utilization: MetricNameDescriptor {
    make(
      "device_utilization", "ratio", "Share of the time since the previous scrape the device spent executing commands.")
  }
  static var busy: MetricNameDescriptor {
    make("device_busy_seconds", "total", "Time the device spent executing commands.")
  }
  static var commands: MetricNameDescriptor { make("device_commands", "total", "Commands executed, any status.") }
  static var errors: MetricNameDescriptor { make("device_command_errors", "total", "Commands that failed, by status.") }
  static var queuePairs: MetricNameDescriptor { make("device_queue_pairs", "", "Queue pairs the BAR has.") }
  static var queuePairsInUse: MetricNameDescriptor {
    make("device_queue_pairs_in_use", "", "Queue pairs claimed by clients.")
  }
  static var processes: MetricNameDescriptor { make("device_processes", "", "Client processes holding queue pairs.") }
  static var moduleLoads: MetricNameDescriptor { make("device_module_loads", "total", "Modules loaded.") }
  static var launches: MetricNameDescriptor { make("device_kernel_launches", "total", "Successful kernel launches.") }
  static var kernel: MetricNameDescriptor {
    make(
      "device_kernel_seconds", "total", "Engine time: wall time of successful launches, start to completion.")
  }
  static var allocations: MetricNameDescriptor { make("device_allocations", "total", "Successful allocations.") }
  static var copyBytes: MetricNameDescriptor {
    make("device_copy_bytes", "total", "Bytes copied by successful copies, by direction.")
  }
  static var servingCPU: MetricNameDescriptor {
    make(
      "serving_thread_cpu_seconds", "total",
      "CPU time of each thread serving the host processes' BARs (--serving-threads); near 1 s a second: saturated.")
  }
  static var servingDevices: MetricNameDescriptor {
    make("serving_thread_devices", "", "Host processes' BARs each serving thread serves.")
  }
  static let latency = "vgpu_device_command_duration_seconds"
  static let latencyHelp = "Device time per command, by opcode (NOPs are not timed)."

  static var processMemory: MetricNameDescriptor {
    make("process_memory_used", "bytes", "Device memory a client process holds.")
  }
  static var processQueuePairs: MetricNameDescriptor {
    make("process_queue_pairs", "", "Queue pairs a client process holds.")
  }
  static var processLaunches: MetricNameDescriptor {
    make("process_kernel_launches", "total", "Successful kernel launches of a client process.")
  }
  static var processCommands: MetricNameDescriptor {
    make("process_commands", "total", "Commands a client process submitted, any status.")
  }
  static var processErrors: MetricNameDescriptor {
    make("process_command_errors", "total", "Commands of a client process that failed.")
  }
  static var processModuleLoads: MetricNameDescriptor {
    make("process_module_loads", "total", "Modules a client process loaded.")
  }
  static var processBusy: MetricNameDescriptor {
    make("process_busy_seconds", "total", "Device time spent on a client process's commands.")
  }
  static var processKernel: MetricNameDescriptor {
    make("process_kernel_seconds", "total", "Engine time of a client process's launches.")
  }
  static var processCopyBytes: MetricNameDescriptor {
    make(
      "process_copy_bytes", "total", "Bytes a client process copied, by direction.")
  }
}

/// Command names of local processes, as `ps` shows them.
enum ProcessNames {
  /// /proc/PID/comm without its newline, or nil when the process is gone.
  static func command(of pid: UInt32) -> String? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8) else { return nil }
    let name = text.trimmingCharacters(in: .newlines)
    return name.isEmpty ? nil : name
  }
}
