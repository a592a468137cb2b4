import ArgumentParser
import DeviceAccess
import Foundation
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

extension PCITool {
  struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Watch who uses a vGPU, live: memory, launches/s and copy MB/s per process, like nvtop.",
      discussion: """
        A header for the device (name, memory in use as a bar, utilization: the share \
        of the interval the device spent executing commands), then one row per client \
        process: pid, command name, queue pairs, device memory, kernel launches per \
        second, copy bandwidth host→device and device→host, and its share of the \
        device's time. Rates are differences between two readings, --interval apart.

        pcitool top is a client like any other: it asks the device through the \
        protocol (the statistics and processes commands), so it works wherever a \
        client does — inside a VM against 0000:00:05.0 (it sees every process of \
        the VM), or on the host against a VM's BAR file (shm:PATH). On unix:PATH it \
        sees only its own BAR: each host process has a BAR of its own there, so \
        other host processes are not listed (use the mediator's --metrics-listen). \
        It holds one queue pair while it runs and leaves itself out of the list. \
        Command names come from /proc/PID/comm when the process is on this machine \
        (for shm:PATH, one that maps the BAR file); clients in a VM seen from the \
        host show "?" (their pids are the guest's).

        Keys: q quits (so do Ctrl-C and SIGTERM); the terminal is restored either way. \
        A narrow terminal drops the right-hand columns first.

        For scripts: --once waits one interval and prints one frame without escape \
        codes; with --json it is one JSON document:
          device, name, intervalSeconds, memoryTotalBytes, memoryUsedBytes,
          utilization (0-1), queuePairs, queuePairsInUse, launchesPerSecond,
          copyBytesPerSecond, processes: [ {pid, command, queuePairs, memoryBytes,
          launches, launchesPerSecond, bytesToDevice, bytesFromDevice,
          copyToDeviceBytesPerSecond, copyFromDeviceBytesPerSecond, busySeconds,
          utilization} ]
        (counters are totals since the process opened the device; the copy fields are \
        absent when the device predates protocol 2.1). --json without --once prints one \
        such document per line, every interval.

        Examples:
          pcitool top                           the default vGPU, refreshed every second
          pcitool top 0000:00:05.0 --sort launches
          pcitool top --once --json | jq '.processes[] | {pid, memoryBytes}'
        """)

    @OptionGroup var target: DeviceArgument

    @Option(name: .long, help: "Seconds between readings (0.1-3600).")
    var interval: Double = 1

    @Flag(name: .long, help: "Wait one interval, print one frame (no escape codes) and exit.")
    var once = false

    @Flag(name: .long, help: "JSON: with --once one document, else one document per line per interval.")
    var json = false

    @Option(name: .long, help: "Order of the rows, largest first: memory, launches, copies, busy or pid.")
    var sort: TopSort = .memory

    func validate() throws {
      guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be 0.1 to 3600 seconds") }
    }

    func run() throws {
      let choice = try target.chosen()
      var options = openOptions(timeout: target.timeout)
      // One pair is enough to ask, and leaves the rest to the clients watched.
      options.queuePairs = 1
      let device = try openDevice(choice, timeout: target.timeout, options: options)
      defer { device.close() }
      let sampler = TopSampler(device: device)
      if once {
        let first = try sampler.sample()
        usleep(UInt32(interval * 1_000_000))
        let frame = sampler.frame(from: first, to: try sampler.sample(), sort: sort)
        if json {
          try printJSON(frame)
        } else {
          print(frame.text(width: Terminal.columns ?? 100).joined(separator: "\n"))
        }
        return
      }
      if json {
        var previous = try sampler.sample()
        let signals = try SignalWatch([SIGINT, SIGTERM, SIGPIPE])
        while signals.wait(milliseconds: Int32(interval * 1000), stdin: false) == .timeout {
          let next = try sampler.sample()
          try printJSONLine(sampler.frame(from: previous, to: next, sort: sort))
          previous = next
        }
        return
      }
      try live(sampler)
    }

    /// The refreshing view: the alternate screen, redrawn every interval and
    /// on resize, put back as it was on every way out.
    private func live(_ sampler: TopSampler) throws {
      let signals = try SignalWatch([SIGINT, SIGTERM, SIGHUP, SIGWINCH])
      let terminal = Terminal()
      defer { terminal.restore() }
      var previous = try sampler.sample()
      // The first frame comes at once, from a short interval.
      var wait: Int32 = 200
      var frame: TopFrame?
      while true {
        switch signals.wait(milliseconds: wait, stdin: terminal.interactive) {
        case .quit: return
        case .key(let k) where k == UInt8(ascii: "q") || k == UInt8(ascii: "Q"): return
        case .key, .resized:
          // Redraw at once; rates keep their interval.
          if let frame { terminal.draw(frame.text(width: terminal.width, height: terminal.height)) }
          continue
        case .timeout:
          break
        }
        let next = try sampler.sample()
        let f = sampler.frame(from: previous, to: next, sort: sort)
        frame = f
        previous = next
        terminal.draw(f.text(width: terminal.width, height: terminal.height))
        wait = Int32(interval * 1000)
      }
    }
  }
}

/// The order of `pcitool top`'s rows.
enum TopSort: String, ExpressibleByArgument, CaseIterable {
  case memory, launches, copies, busy, pid
}

/// One reading of the device.
struct TopSample {
  var time: UInt64
  var device: StatisticsRecord
  /// Nil fields of activity when the device predates protocol 2.1.
  var processes: [ProcessActivityRecord]
  var hasActivity: Bool
}

/// Reads the device and turns two readings into a frame.
final class TopSampler {
  let device: Device
  private let names: ProcessNames
  private let hasActivity: Bool

  init(device: Device) {
    self.device = device
    names = ProcessNames(spec: device.info.spec)
    hasActivity = device.info.features.contains(.processActivity)
  }

  func sample() throws -> TopSample {
    do {
      let stats = try device.statistics(.device)
      let processes =
        hasActivity
        ? try device.processActivity() : try device.processes().map { ProcessActivityRecord(process: $0) }
      let mine = UInt32(getpid())
      return TopSample(
        time: DispatchTime.now().uptimeNanoseconds, device: stats,
        processes: processes.filter { $0.process.pid != mine }, hasActivity: hasActivity)
    } catch { throw ToolError(error) }
  }

  func frame(from a: TopSample, to b: TopSample, sort: TopSort) -> TopFrame {
    let seconds = max(Double(b.time &- a.time) / 1e9, 1e-9)
    func rate(_ new: UInt64, _ old: UInt64) -> Double { new >= old ? Double(new - old) / seconds : 0 }
    let before = Dictionary(a.processes.map { ($0.process.pid, $0) }) { first, _ in first }
    var rows: [TopFrame.Process] = b.processes.map { p in
      let old = before[p.process.pid] ?? ProcessActivityRecord(process: ProcessRecord(pid: p.process.pid))
      return TopFrame.Process(
        pid: p.process.pid, command: names.command(of: p.process.pid), queuePairs: p.process.queuePairs,
        memoryBytes: p.process.bytesAllocated, launches: p.process.launches,
        launchesPerSecond: rate(p.process.launches, old.process.launches),
        bytesToDevice: b.hasActivity ? p.bytesToDevice : nil, bytesFromDevice: b.hasActivity ? p.bytesFromDevice : nil,
        copyToDeviceBytesPerSecond: b.hasActivity ? rate(p.bytesToDevice, old.bytesToDevice) : nil,
        copyFromDeviceBytesPerSecond: b.hasActivity ? rate(p.bytesFromDevice, old.bytesFromDevice) : nil,
        busySeconds: Double(p.process.busyNanoseconds) / 1e9,
        utilization: min(1, rate(p.process.busyNanoseconds, old.process.busyNanoseconds) / 1e9))
    }
    rows.sort { x, y in
      switch sort {
      case .memory: (x.memoryBytes, y.pid) > (y.memoryBytes, x.pid)
      case .launches: (x.launchesPerSecond, y.pid) > (y.launchesPerSecond, x.pid)
      case .copies: (x.copyBytesPerSecond, y.pid) > (y.copyBytesPerSecond, x.pid)
      case .busy: (x.utilization, y.pid) > (y.utilization, x.pid)
      case .pid: x.pid < y.pid
      }
    }
    let info = device.info
    return TopFrame(
      device: info.spec.description, name: info.identity.name, intervalSeconds: seconds,
      memoryTotalBytes: info.identity.memorySize, memoryUsedBytes: b.device.bytesAllocated,
      utilization: min(1, rate(b.device.busyNanoseconds, a.device.busyNanoseconds) / 1e9),
      queuePairs: info.queuePairsOnDevice, queuePairsInUse: b.device.queuePairs,
      launchesPerSecond: rate(b.device.launches, a.device.launches),
      copyBytesPerSecond: rate(b.device.bytesCopied, a.device.bytesCopied), processes: rows)
  }
}

/// What `pcitool top` shows, and what `--json` prints (fields documented in `pcitool top --help`).
struct TopFrame: Encodable {
  struct Process: Encodable {
    var pid: UInt32
    var command: String
    var queuePairs: UInt32
    var memoryBytes: UInt64
    var launches: UInt64
    var launchesPerSecond: Double
    var bytesToDevice: UInt64?
    var bytesFromDevice: UInt64?
    var copyToDeviceBytesPerSecond: Double?
    var copyFromDeviceBytesPerSecond: Double?
    var busySeconds: Double
    var utilization: Double

    var copyBytesPerSecond: Double { (copyToDeviceBytesPerSecond ?? 0) + (copyFromDeviceBytesPerSecond ?? 0) }
  }

  var device: String
  var name: String
  var intervalSeconds: Double
  var memoryTotalBytes: UInt64
  var memoryUsedBytes: UInt64
  var utilization: Double
  var queuePairs: Int
  var queuePairsInUse: UInt64
  var launchesPerSecond: Double
  var copyBytesPerSecond: Double
  var processes: [Process]

  /// The frame as lines of at most `width` characters (and at most `height` lines).
  func text(width: Int, height: Int = .max) -> [String] {
    let width = max(width, 20)
    var lines: [String] = []
    lines.append("\(name) · \(device) · every \(String(format: "%.1f", intervalSeconds)) s")
    let used = memoryTotalBytes == 0 ? 0 : Double(memoryUsedBytes) / Double(memoryTotalBytes)
    let memoryText = " \(TopFormat.bytes(memoryUsedBytes)) / \(TopFormat.bytes(memoryTotalBytes))"
    let utilText = String(format: " %3.0f%%", utilization * 100)
    // Two bars side by side when there is room, else one under the other.
    let half = width >= 80 ? (width - 1) / 2 : width
    lines.append(
      contentsOf: TopFormat.joinBars(
        TopFormat.bar("MEM", used, memoryText, width: half), TopFormat.bar("UTIL", utilization, utilText, width: half),
        side: width >= 80))
    lines.append(
      "queue pairs \(queuePairsInUse)/\(queuePairs) · processes \(processes.count) · launches "
        + TopFormat.rate(launchesPerSecond) + "/s · copies " + TopFormat.megabytes(copyBytesPerSecond) + " MB/s")
    lines.append("")
    let columns = TopFormat.columns(for: width)
    lines.append(columns.map { $0.header }.joined(separator: " "))
    for p in processes {
      lines.append(columns.map { $0.cell(p) }.joined(separator: " "))
    }
    if processes.isEmpty { lines.append("(no client processes)") }
    return lines.prefix(height).map { String($0.prefix(width)) }
  }
}

/// Columns and number formats of `pcitool top`.
enum TopFormat {
  struct Column {
    var title: String
    var width: Int
    var leftAligned = false
    var value: (TopFrame.Process) -> String

    var header: String { align(title) }
    func cell(_ p: TopFrame.Process) -> String { align(value(p)) }
    func align(_ s: String) -> String {
      let s = String(s.prefix(width))
      let pad = String(repeating: " ", count: width - s.count)
      return leftAligned ? s + pad : pad + s
    }
  }

  /// By priority: the first ones stay on a narrow terminal.
  static var all: [Column] {
    [
      Column(title: "PID", width: 8) { "\($0.pid)" },
      Column(title: "COMMAND", width: 16, leftAligned: true) { $0.command },
      Column(title: "MEMORY", width: 10) { bytes($0.memoryBytes) },
      Column(title: "LAUNCH/S", width: 9) { rate($0.launchesPerSecond) },
      Column(title: "H2D MB/s", width: 9) { $0.copyToDeviceBytesPerSecond.map(megabytes) ?? "-" },
      Column(title: "D2H MB/s", width: 9) { $0.copyFromDeviceBytesPerSecond.map(megabytes) ?? "-" },
      Column(title: "BUSY%", width: 6) { String(format: "%.1f", $0.utilization * 100) },
      Column(title: "LAUNCHES", width: 10) { "\($0.launches)" },
      Column(title: "QPS", width: 4) { "\($0.queuePairs)" },
    ]
  }

  /// As many columns as fit in `width`, in priority order.
  static func columns(for width: Int) -> [Column] {
    var used = 0
    var chosen: [Column] = []
    for c in all where used + c.width + (chosen.isEmpty ? 0 : 1) <= width || chosen.count < 2 {
      used += c.width + (chosen.isEmpty ? 0 : 1)
      chosen.append(c)
    }
    return chosen
  }

  /// `MEM [||||||      ] 1.0 GiB / 8.0 GiB` in `width` characters.
  static func bar(_ label: String, _ fraction: Double, _ suffix: String, width: Int) -> String {
    let inner = max(0, width - label.count - suffix.count - 3)
    let filled = Int((min(1, max(0, fraction)) * Double(inner)).rounded())
    return label + " [" + String(repeating: "|", count: filled) + String(repeating: " ", count: inner - filled) + "]"
      + suffix
  }

  static func joinBars(_ a: String, _ b: String, side: Bool) -> [String] { side ? [a + " " + b] : [a, b] }

  /// `512 B`, `64.0 KiB`, `1.5 GiB`.
  static func bytes(_ n: UInt64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] where n >= 1 << shift {
      return String(format: "%.1f", Double(n) / Double(1 << shift)) + " " + unit
    }
    return "\(n) B"
  }

  static func rate(_ perSecond: Double) -> String { String(format: "%.1f", perSecond) }
  /// Decimal megabytes, as bandwidth is quoted.
  static func megabytes(_ bytesPerSecond: Double) -> String { String(format: "%.2f", bytesPerSecond / 1e6) }
}

/// Command names of the processes a device lists, where this machine can know them.
final class ProcessNames {
  /// The BAR file a local client maps (shm: devices); nil for PCI devices,
  /// whose clients are this machine's processes when we run in the guest.
  private let barFile: String?
  private let local: Bool
  private var cache: [UInt32: String] = [:]

  init(spec: DeviceSpec) {
    switch spec {
    case .sharedMemory(let path):
      barFile = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
      local = true
    case .pci, .unixSocket:
      barFile = nil
      local = true
    case .simulated:
      barFile = nil
      local = false
    }
  }

  /// /proc/PID/comm, when PID is a process of this machine using the device; else "?".
  func command(of pid: UInt32) -> String {
    if let known = cache[pid] { return known }
    var name = "?"
    // HostEnvironment reads to the end: Foundation's String(contentsOfFile:) gives the first
    // 4 KiB of a /proc file (its size reads 0), and a BAR's line in a process with many
    // mappings (a sanitized or a big Python process) came after it: the command showed "?".
    let host = HostEnvironment.live
    if local, let comm = host.readText("/proc/\(pid)/comm") {
      // Behind shm:, a pid is ours only if that process maps the BAR; else
      // it is a guest's pid in a VM served from the same file.
      if let barFile {
        let maps = host.readText("/proc/\(pid)/maps", limit: .max) ?? ""
        if maps.contains(barFile) { name = comm }
      } else {
        name = comm
      }
    }
    cache[pid] = name
    return name
  }
}

/// One JSON document on one line (for `--json` without `--once`).
func printJSONLine<T: Encodable>(_ value: T) throws {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
  var data = try encoder.encode(value)
  data.append(UInt8(ascii: "\n"))
  FileHandle.standardOutput.write(data)
}

/// Signals taken as events (blocked, then collected with sigtimedwait)
/// rather than handlers, so that `top` restores the terminal in plain code;
/// and the keyboard, polled between looks at them.
final class SignalWatch {
  enum Event: Equatable {
    case timeout, quit, resized
    case key(UInt8)
  }
  private var set = sigset_t()

  init(_ signals: [Int32]) throws {
    sigemptyset(&set)
    for s in signals { sigaddset(&set, s) }
    guard pthread_sigmask(SIG_BLOCK, &set, nil) == 0 else {
      throw ToolError(status: .failure, description: "pthread_sigmask failed; cannot watch for Ctrl-C")
    }
  }

  /// Waits up to `milliseconds` for one of the signals or (with `stdin`) a key.
  /// While watching the keyboard it looks for signals every 100 ms.
  func wait(milliseconds: Int32, stdin: Bool) -> Event {
    let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, milliseconds)) * 1_000_000
    while true {
      var none = timespec(tv_sec: 0, tv_nsec: 0)
      let pending = sigtimedwait(&set, nil, &none)
      if pending > 0 { return pending == SIGWINCH ? .resized : .quit }
      let now = DispatchTime.now().uptimeNanoseconds
      guard now < deadline else { return .timeout }
      let slice = min(deadline - now, stdin ? 100_000_000 : deadline - now)
      if stdin {
        var fd = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
        if poll(&fd, 1, Int32((slice + 999_999) / 1_000_000)) > 0 {
          var byte: UInt8 = 0
          // End of input (a closed terminal) quits like q.
          return read(0, &byte, 1) == 1 ? .key(byte) : .quit
        }
      } else {
        var timeout = timespec(tv_sec: Int(slice / 1_000_000_000), tv_nsec: Int(slice % 1_000_000_000))
        let s = sigtimedwait(&set, nil, &timeout)
        if s > 0 { return s == SIGWINCH ? .resized : .quit }
      }
    }
  }
}

/// The terminal `top` draws on: the alternate screen, no cursor, keys
/// without Enter; put back as it was by `restore()`.
final class Terminal {
  private var saved: termios?
  /// Whether standard input is a terminal whose keys we read.
  let interactive: Bool
  private var restored = false

  init() {
    interactive = isatty(0) == 1
    if interactive {
      var t = termios()
      if tcgetattr(0, &t) == 0 {
        saved = t
        // Keys one at a time, unechoed; Ctrl-C still signals (ISIG stays).
        t.c_lflag &= ~tcflag_t(ICANON | ECHO)
        _ = tcsetattr(0, TCSANOW, &t)
      }
    }
    write("\u{1b}[?1049h\u{1b}[?25l")
  }

  func restore() {
    guard !restored else { return }
    restored = true
    write("\u{1b}[?25h\u{1b}[?1049l")
    if var t = saved { _ = tcsetattr(0, TCSANOW, &t) }
  }

  deinit { restore() }

  /// Columns and rows of standard output, when it is a terminal.
  static var size: (columns: Int, rows: Int)? {
    var w = winsize()
    guard ioctl(1, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 0 else { return nil }
    return (Int(w.ws_col), Int(w.ws_row))
  }
  static var columns: Int? { size?.columns ?? ProcessInfo.processInfo.environment["COLUMNS"].flatMap { Int($0) } }
  var width: Int { Self.size?.columns ?? 100 }
  var height: Int { Self.size?.rows ?? 40 }

  /// Home, each line cleared to its end, the rest of the screen cleared.
  func draw(_ lines: [String]) {
    write("\u{1b}[H" + lines.map { $0 + "\u{1b}[K" }.joined(separator: "\r\n") + "\u{1b}[J")
  }

  private func write(_ text: String) {
    let bytes = Array(text.utf8)
    var done = 0
    while done < bytes.count {
      let n = bytes.withUnsafeBytes { Glibc.write(1, $0.baseAddress! + done, $0.count - done) }
      if n <= 0 { break }
      done += n
    }
  }
}
