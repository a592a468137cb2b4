import ArgumentParser
import DeviceAccess
import Foundation
import Logging
import PTX
import VGPUDevice
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// The host side of the vGPU: serves a shared-memory BAR with the reference
/// device, for any number of client processes (and, through QEMU's ivshmem,
/// for a VM).
struct Mediator: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vgpu-mediator",
    abstract: "Serve a vGPU to host processes over a Unix socket, or to a VM over a shared-memory BAR file.",
    discussion: """
      Host processes connect to the mediator's Unix socket (--socket) and each gets \
      a BAR of its own (docs/PROTOCOL.md §23): no process sees or touches another's \
      rings, staging or memory. Clients name the socket as unix:PATH, e.g.

        vgpu-mediator &
        VGPU_DEVICE=unix:/run/vgpu/vgpu0.sock pcitool selftest

      A process is known by its socket (SO_PEERCRED: pid, uid, gid, which cross \
      container PID namespaces) and admitted by --allow-uid/--allow-group (default: \
      this user, root and group vgpu). When its socket closes (exit, SIGKILL) its \
      queue pairs and device memory are released at once.

      At most --max-clients processes are served at once (default 256). One more \
      waits for a place (the greeting says who holds them) and gets it when a \
      process exits; it gives up at its open deadline (the shims' VGPU_TIMEOUT, \
      default 2 s) with a message naming the limit. Within one BAR, --queue-pairs \
      bounds the threads of a process that submit at once (the shims use one pair \
      per process); on a shared BAR (--vm, each --vm-bar, --shared-bar) it bounds the processes, \
      and one more waits the same way for a pair to be freed.

      With --vm (or --ivshmem-socket) the mediator serves one BAR file (--path) to a \
      VM instead: QEMU's ivshmem device maps it, and the VM is one tenant. \
      --vm-bar (repeatable) serves several VMs from one mediator, each with a BAR \
      file, an ivshmem server socket and a memory limit of its own, all on one \
      device (one backend, one --memory), e.g.

        vgpu-mediator --memory 16G --vectors 8 \\
          --vm-bar /dev/shm/vm1,socket=/run/vgpu/vm1.sock,memory=8G \\
          --vm-bar /dev/shm/vm2,socket=/run/vgpu/vm2.sock,name=build

      SIGINT or SIGTERM stops the mediator: the commands in hand complete, the \
      status register says the device stopped, and waiting clients get an error.

      A second mediator on a socket or file that a live one serves is refused.
      Exit status: 0 after a clean stop, 1 when the device (or the metrics endpoint) could not be set up, \
      2 on a bad command line.
      """)

  @Option(
    name: .long,
    help: ArgumentHelp(
      """
      The Unix socket host processes connect to (unix:PATH). Default: \(HostSocketPath.standard) \
      if /run/vgpu can be created, else \(HostSocketPath.fallback). Not with --vm.
      """, valueName: "path"))
  var socket: String?

  @Option(
    name: .customLong("allow-uid"),
    help: ArgumentHelp(
      "A user id that may connect to --socket (repeatable). With --allow-uid or --allow-group, only those are admitted.",
      valueName: "uid"))
  var allowUIDs: [UInt32] = []

  @Option(
    name: .customLong("allow-group"),
    help: ArgumentHelp(
      "A group whose members may connect to --socket (repeatable; primary or supplementary group).",
      valueName: "name"))
  var allowGroups: [String] = []

  @Option(
    name: .customLong("path"),
    help: "With --vm or --shared-bar: the BAR file (a file on tmpfs: /dev/shm/NAME; default /dev/shm/vgpu0).")
  var pathOption: String?
  /// The BAR file of --vm and --shared-bar.
  var path: String { pathOption ?? "/dev/shm/vgpu0" }

  @Flag(
    name: .customLong("shared-bar"),
    help: """
      Serve host processes on one BAR file (--path, shm:PATH) instead of the socket: every \
      process that can open the file is one tenant and can disturb the others. For benchmarks \
      and tests that need one BAR for several processes (as a VM's share theirs).
      """)
  var sharedBAR = false

  @Option(
    name: .long,
    help: ArgumentHelp(
      """
      Device memory all clients may hold together, e.g. 80G, 512M: this mediator's slice, enforced exactly. \
      Default: 80G on the reference device (only touched pages cost RAM); the GPU's memory with --backend cuda.
      """, valueName: "size"))
  var memory: String?

  @Option(
    name: .long,
    help: ArgumentHelp(
      """
      What does the work: 'reference' (the CPU reference device: memory in this host's RAM, \
      PTX interpreted) or 'cuda' (this host's NVIDIA GPU through its driver, libcuda.so.1: \
      memory, copies, modules and kernels run on the GPU).
      """, valueName: "backend"))
  var backend = "reference"

  @Option(name: .long, help: "With --backend cuda: the GPU, by CUDA ordinal (as CUDA_VISIBLE_DEVICES numbers them).")
  var gpu: Int32 = 0

  @Option(
    name: .customLong("cuda-library"),
    help: ArgumentHelp(
      """
      With --backend cuda: the driver library to load (default libcuda.so.1, found as the dynamic \
      loader finds it). This project's own libcuda.so.1 works too: the GPU is then another vGPU \
      (layered mode, for tests without a GPU).
      """, valueName: "path"))
  var cudaLibrary = "libcuda.so.1"

  @Option(
    name: .customLong("nvml-library"),
    help: ArgumentHelp(
      """
      With --backend cuda: the NVML library that says how busy the GPU is (default libnvidia-ml.so.1); \
      guests' NVML reports it as utilization. Without it, utilization is the time spent serving commands.
      """, valueName: "path"))
  var nvmlLibrary = "libnvidia-ml.so.1"

  @Option(
    name: .customLong("queue-pairs"),
    help: """
      Queue pairs per BAR (1-256): on the socket, how many threads of one process submit at once; \
      on a shared BAR (--vm, each --vm-bar, --shared-bar), how many processes use it at once (one more waits for a free pair).
      """)
  var queuePairs = 8

  @Option(
    name: .customLong("max-clients"),
    help: ArgumentHelp(
      """
      Processes served at once on --socket (1-65536; default 256), each with a BAR of its own; one more \
      waits (up to its open deadline) until one exits. Not with --vm or --shared-bar (--queue-pairs bounds those).
      """, valueName: "count"))
  var maxClients: Int?

  @Option(
    name: .customLong("serving-threads"),
    help: ArgumentHelp(
      """
      Threads that serve the host processes' BARs on --socket, each serving its share of the processes \
      in turn (0-64; default: a quarter of the cores, 1 to 4). 0: a thread per process, each spinning \
      on its own BAR (what the mediator did before; many processes on few cores then wait for each other).
      """, valueName: "count"))
  var servingThreads: Int?

  @Option(
    name: .customLong("serving-priority"),
    help: ArgumentHelp(
      """
      How the serving threads of --serving-threads are scheduled: normal (default), nice:N (-20 to 19), \
      or realtime[:P] (SCHED_FIFO, priority P, default 1): a thread with commands to serve then runs ahead of \
      the clients, as a device would, so many busy clients on few cores do not delay each other's commands. \
      Below nice 0 and realtime need root or CAP_SYS_NICE; without it the mediator says so and runs normal.
      """, valueName: "policy"))
  var servingPriority = "normal"

  @Option(name: .long, help: "Entries per ring (a power of two, 2-4096).")
  var depth = 256

  @Option(name: .customLong("slot-size"), help: "Staging slot size (whole pages, e.g. 256K).")
  var slotSize = "256K"

  @Option(name: .long, help: "Staging slots per queue pair: copies keep this many chunks in flight.")
  var slots = 7

  @Option(
    name: .long,
    help: "The device name clients see (cuDeviceGetName, nvidia-smi). Default: the GPU's, or the reference device's.")
  var name: String?

  @Option(
    name: .customLong("cuda-driver-version"),
    help: ArgumentHelp(
      """
      The CUDA driver version the device reports (cuDriverGetVersion, nvidia-smi), as MAJOR.MINOR. \
      A CUDA runtime needs a driver at least as new as itself: 13.0 or later for libcudart.so.13. \
      Default: 12.8 on the reference device, the host driver's with --backend cuda.
      """, valueName: "version"))
  var cudaDriverVersion: String?

  @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
  var logLevel = "info"

  @Flag(
    name: .long,
    help: """
      The clients are in a VM (the file backs QEMU's ivshmem device): their pids mean nothing \
      on this host, so queue pairs are not reclaimed by pid; the device offers the guest \
      heartbeat instead (protocol 2.3), and a pair whose guest process stops beating for 1.5 s \
      (killed without closing) is reclaimed with its memory. Without --ivshmem-socket the idle \
      device sleeps in 1 ms slices, because a guest cannot wake it.
      """)
  var vm = false

  @Option(
    name: .customLong("host-window"),
    help: ArgumentHelp(
      """
      With --vm: a page-locked window of at least SIZE (e.g. 256M) in the BAR file, past the \
      queues and staging (protocol 2.4, feature hostWindow). cuMemAllocHost in the VM then \
      hands out memory there, which both sides map, and copies from and to it take one copy \
      instead of two through the staging slots, as a GPU's DMA from page-locked memory. The \
      file grows by SIZE (still a power of two for QEMU; the window takes all of it past the \
      layout). Default: no window. For several VMs: --vm-bar ...,window=SIZE.
      """, valueName: "size"))
  var hostWindow: String?

  @Option(
    name: .customLong("vm-bar"),
    help: ArgumentHelp(
      """
      Serve one VM's BAR file; repeat it to serve several VMs from one mediator (one device: one \
      backend, one --memory). Each VM gets its own BAR file, device thread and, with socket=, its \
      own ivshmem server (as --ivshmem-socket; --vectors applies to each). memory= is the VM's own \
      limit within --memory (default: all of it): an allocation beyond it fails for that VM only. \
      name= labels its log lines (vm=NAME) and metrics (default: the file's name). \
      window= gives the VM a page-locked window of at least SIZE (as --host-window). \
      Not with --path, --vm, --ivshmem-socket or --shared-bar.
      """, valueName: VMBar.form))
  var vmBarSpecs: [String] = []

  /// The parsed --vm-bar values (validate() has refused bad ones).
  var vmBars: [VMBar] { vmBarSpecs.compactMap { try? VMBar.parse($0).get() } }

  @Option(
    name: .customLong("ivshmem-socket"),
    help: ArgumentHelp(
      """
      Act as the ivshmem server for QEMU's ivshmem-doorbell on this Unix socket (implies --vm): \
      a guest's doorbell wakes the device and completions raise MSI-X interrupts, so neither \
      side polls while idle. QEMU: -chardev socket,path=PATH,id=vgpu \
      -device ivshmem-doorbell,chardev=vgpu,vectors=N,addr=05.0 (N at least --vectors).
      """, valueName: "path"))
  var ivshmemSocket: String?

  @Option(
    help:
      "MSI-X vectors per guest (with --ivshmem-socket); queue pair q raises vector q % N. Default: the queue pairs, at most 64."
  )
  var vectors: Int?

  @Option(
    name: .customLong("kernel-budget"),
    help: ArgumentHelp(
      """
      Thread-instructions one kernel launch may run before it fails with CUDA error 702 \
      (launch timeout), as a watchdog ends an endless loop. The interpreter runs warps in \
      lockstep, about 2·10^8 a second per core, and spreads a launch's blocks over the \
      cores (VGPU_PTX_ENGINE=serial: thread by thread on one core, about 10^8 a second).
      """, valueName: "count"))
  var kernelBudget: UInt64 = PTXLaunchOptions.defaultInstructionBudget

  @Option(
    name: .customLong("metrics-listen"),
    help: ArgumentHelp(
      """
      Serve Prometheus metrics (GET /metrics) on this address: \(MetricsAddress.forms). \
      Off unless given; without a host it binds loopback only. Port 0 takes a free port \
      (the log says which). Per device and per client process: memory, launches, copies, \
      busy and engine time, errors by status, command latency histograms (docs/METRICS.md). \
      The device is read only when scraped: an idle endpoint costs no CPU.
      """, valueName: "addr"))
  var metricsListen: String?

  func validate() throws {
    if let memory, Size.parse(memory) == nil {
      throw ValidationError("--memory '\(memory)' is not a size such as 80G or 512M")
    }
    guard backend == "reference" || backend == "cuda" else {
      throw ValidationError("--backend '\(backend)' is neither 'reference' nor 'cuda'")
    }
    guard gpu >= 0 else { throw ValidationError("--gpu must be a CUDA ordinal: 0 or more") }
    guard let slot = Size.parse(slotSize), slot > 0, slot % 4096 == 0, slot <= 1 << 30 else {
      throw ValidationError("--slot-size '\(slotSize)' must be whole 4 KiB pages, at most 1G")
    }
    guard (1...256).contains(queuePairs) else { throw ValidationError("--queue-pairs must be 1-256") }
    if let maxClients, !(1...65536).contains(maxClients) {
      throw ValidationError("--max-clients must be 1-65536 (processes served at once)")
    }
    guard (2...4096).contains(depth), depth & (depth - 1) == 0 else {
      throw ValidationError("--depth must be a power of two from 2 to 4096")
    }
    guard (1...depth - 1).contains(slots) else { throw ValidationError("--slots must be 1 to depth-1") }
    if let v = cudaDriverVersion, Self.cudaVersion(v) == nil {
      throw ValidationError("--cuda-driver-version '\(v)' is not MAJOR.MINOR, e.g. 12.8 or 13.0")
    }
    for spec in vmBarSpecs {
      if case .failure(let e) = VMBar.parse(spec) { throw ValidationError(e.description) }
    }
    if let hostWindow {
      guard let size = Size.parse(hostWindow), size > 0, size % 4096 == 0, size <= 1 << 40 else {
        throw ValidationError(
          "--host-window '\(hostWindow)' is not a size of whole 4 KiB pages up to 1T, such as 256M")
      }
      guard vm || ivshmemSocket != nil else {
        throw ValidationError(
          "--host-window gives a VM's guests page-locked memory in their BAR (--vm or --ivshmem-socket); host processes' page-locked memory is shared with the device without it, and --vm-bar takes window=SIZE"
        )
      }
    }
    if !vmBarSpecs.isEmpty {
      if vm || ivshmemSocket != nil || sharedBAR || pathOption != nil {
        throw ValidationError(
          "--vm-bar names each VM's BAR file and socket itself; --path, --vm and --ivshmem-socket serve a single VM, --shared-bar host processes: use --vm-bar alone (one VM: --vm-bar PATH,socket=SOCKET)"
        )
      }
      if socket != nil || !allowUIDs.isEmpty || !allowGroups.isEmpty || maxClients != nil || servingThreads != nil
        || servingPriority != "normal"
      {
        throw ValidationError(
          "--socket, --allow-uid, --allow-group, --max-clients, --serving-threads and --serving-priority serve host processes; not with --vm-bar (there --queue-pairs bounds each VM's processes, and each VM's BAR has a serving thread of its own)"
        )
      }
      // With --backend cuda and no --memory the GPU's size is checked once it is known.
      let total = memory.flatMap(Size.parse) ?? (backend == "cuda" ? UInt64.max : Size.parse("80G")!)
      if let problem = VMBar.conflicts(vmBars, total: total, totalText: memory ?? "80G") {
        throw ValidationError(problem)
      }
    }
    if let vectors {
      guard ivshmemSocket != nil || vmBars.contains(where: { $0.socket != nil }) else {
        throw ValidationError("--vectors needs --ivshmem-socket, or a --vm-bar with socket=")
      }
      guard (1...64).contains(vectors) else { throw ValidationError("--vectors must be 1-64") }
    }
    guard Logger.Level(rawValue: logLevel) != nil else {
      throw ValidationError("--log-level '\(logLevel)' is not a level")
    }
    let fileMode = vm || ivshmemSocket != nil || sharedBAR
    if !fileMode && pathOption != nil {
      throw ValidationError(
        "--path names a BAR file (with --vm, --ivshmem-socket or --shared-bar); host processes connect to --socket now (VGPU_DEVICE=unix:PATH)"
      )
    }
    if fileMode
      && (socket != nil || !allowUIDs.isEmpty || !allowGroups.isEmpty || maxClients != nil || servingThreads != nil
        || servingPriority != "normal")
    {
      throw ValidationError(
        "--socket, --allow-uid, --allow-group, --max-clients, --serving-threads and --serving-priority serve host processes; not with --vm, --ivshmem-socket or --shared-bar (there --queue-pairs bounds the processes)"
      )
    }
    guard Self.priority(servingPriority) != nil else {
      throw ValidationError(
        "--serving-priority '\(servingPriority)' is not a policy: give normal, nice:N (N from -20 to 19) or realtime[:P] (P from 1 to 99)"
      )
    }
    if servingPriority != "normal" && servingThreads == 0 {
      throw ValidationError("--serving-priority applies to the shared serving threads; --serving-threads 0 has none")
    }
    if let servingThreads, !(0...64).contains(servingThreads) {
      throw ValidationError(
        "--serving-threads \(servingThreads) is out of range: give 1-64 threads shared by the processes, or 0 for a thread per process"
      )
    }
    if sharedBAR && (vm || ivshmemSocket != nil) {
      throw ValidationError("--shared-bar serves host processes on one file; a VM's file is --vm")
    }
    if let metricsListen, MetricsAddress(metricsListen) == nil {
      throw ValidationError("--metrics-listen '\(metricsListen)' is not an address: use \(MetricsAddress.forms)")
    }
    if let problem = PTXLaunchOptions.environmentProblem(ProcessInfo.processInfo.environment) {
      throw ValidationError(problem)
    }
  }

  func run() throws {
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    var log = Logger(label: "vgpu-mediator")
    log.logLevel = Logger.Level(rawValue: logLevel) ?? .info

    var config = ReferenceDeviceConfiguration()
    config.kernelInstructionBudget = kernelBudget
    config.memorySize = Size.parse(memory ?? "80G")!
    config.cudaDriverVersion = Self.cudaVersion(cudaDriverVersion ?? "12.8")!
    // The host's GPU, opened before the BAR is touched: without a driver or
    // a GPU the mediator says so in one line and serves nothing.
    let fileMode = vm || ivshmemSocket != nil || sharedBAR
    // What clients open: the BAR file, or the socket (which names the device in logs and metrics).
    let served = vmBars.first?.path ?? (fileMode ? path : (socket ?? Self.defaultSocket()))
    var driver: CUDADriver?
    if backend == "cuda" {
      do {
        let d = try CUDADriver.load(path: cudaLibrary)
        let gpu = try d.identity(ordinal: self.gpu)
        config.adopt(gpu, barPath: served)
        if cudaDriverVersion == nil { config.cudaDriverVersion = UInt32(d.version) }
        if let memory {
          config.memorySize = Size.parse(memory)!
          guard config.memorySize <= UInt64(gpu.totalMemory) else {
            throw Failure(
              "--memory \(memory) is more than \(gpu.name) has (\(gpu.totalMemory >> 20) MiB); give this BAR a slice of it"
            )
          }
        }
        driver = d
        log.info(
          "host GPU",
          metadata: [
            "gpu": "\(gpu)", "driver": "\(d.path) (CUDA \(d.versionString))",
            "layered": "\(d.isVGPUShim ? "yes: the host driver is this project's own shim" : "no")",
          ])
      } catch let e as CUDADriverError {
        throw Failure(e.description)
      }
    }
    if let name { config.name = name }
    let vm = vm || ivshmemSocket != nil
    config.layout = BARLayout(
      queuePairs: UInt32(queuePairs), depth: UInt32(depth), stagingSlotSize: UInt32(Size.parse(slotSize)!),
      slotsPerQueue: UInt32(slots))
    let events = Self.eventLogger(log)
    if !vmBarSpecs.isEmpty {
      if let tooBig = vmBars.first(where: { ($0.memory ?? 0) > config.memorySize }) {
        throw Failure(
          "--vm-bar \(tooBig.path): memory= (\(tooBig.memory! >> 20) MiB) is more than the device's \(config.memorySize >> 20) MiB; give this VM at most that"
        )
      }
      try serveVMs(config, vmBars, driver: driver, log: log)
    } else if fileMode {
      try serveFile(config, driver: driver, vm: vm, log: log, events: events)
    } else {
      try serveHosts(config, socketPath: served, driver: driver, log: log, events: events)
    }
  }

  /// Host processes, each with a BAR of its own, on the Unix socket.
  private func serveHosts(
    _ config: ReferenceDeviceConfiguration, socketPath: String, driver: CUDADriver?, log: Logger,
    events: @escaping @Sendable (DeviceEvent) -> Void
  ) throws {
    let allow = try AllowList.make(uids: allowUIDs, groupNames: allowGroups)
    // No BAR outlives a client, so no staging is page-locked up front:
    // a GPU's copies go through the driver's bounce buffers.
    let work = try driver.map { try cudaBackend($0, staging: nil, log: log) }
    let shared: SharedExecution
    do { shared = try SharedExecution(configuration: config, backend: work) } catch {
      throw Failure(error.description)
    }
    let maxClients = maxClients ?? Self.defaultMaxClients
    Self.raiseDescriptorLimit(for: maxClients, log: log)
    var signals = Self.blockStopSignals()
    let servingThreads = servingThreads ?? Self.defaultServingThreads
    let server = try HostClientServer(
      socketPath: socketPath, allow: allow, shared: shared, configuration: config, maxClients: maxClients,
      servingThreads: servingThreads, servingPriority: Self.priority(servingPriority)!, log: log, onEvent: events)
    let metrics: MetricsServer?
    do {
      metrics = try startMetrics(
        DeviceMetrics(
          configuration: config, deviceLabel: server.socketPath, vm: false, servingPool: server.servingPool
        ) { server.snapshot() },
        log: log)
    } catch {
      server.stop()  // removes the socket
      throw error
    }
    server.start()
    log.info(
      "serving host processes",
      metadata: [
        "socket": "\(server.socketPath)", "client": "VGPU_DEVICE=unix:\(server.socketPath)",
        "admits": "\(allow.summary)", "memory": "\(config.memorySize >> 20) MiB", "backend": "\(shared.backendName)",
        "barPerClient": "\(config.layout.regionSize) bytes, \(queuePairs) queue pairs", "maxClients": "\(maxClients)",
        "servingThreads": "\(servingThreads == 0 ? "one per process" : "\(servingThreads), \(servingPriority)")",
        "pid": "\(getpid())",
      ])
    var received: Int32 = 0
    sigwait(&signals, &received)
    log.info("stopping", metadata: ["signal": "\(received == SIGINT ? "SIGINT" : "SIGTERM")"])
    metrics?.stop()
    server.stop()
    log.info("stopped", metadata: ["memoryStillAllocated": "\(shared.memoryInUse.allocated)"])
  }

  /// One BAR file: a VM's (QEMU's ivshmem maps it), or with --shared-bar every host process's.
  private func serveFile(
    _ configuration: ReferenceDeviceConfiguration, driver: CUDADriver?, vm: Bool, log: Logger,
    events: @escaping @Sendable (DeviceEvent) -> Void
  ) throws {
    var config = configuration
    if vm {
      config.ownersAreLocalProcesses = false
      // Without doorbells nothing wakes the device from a VM: it looks often.
      if ivshmemSocket == nil { config.wait.sleepSliceNanoseconds = 1_000_000 }
    }
    if let hostWindow { config.hostWindow = Size.parse(hostWindow)! }
    let region = try Self.openBAR(path, configuration: config, vm: vm, option: "--path")
    let device: ReferenceDevice
    do {
      let layout = config.layout
      let staging = UnsafeMutableRawBufferPointer(
        start: region.base + Int(layout.stagingOffset), count: Int(layout.stagingSize))
      let work = try driver.map { try cudaBackend($0, staging: staging, log: log) }
      device = try ReferenceDevice(configuration: config, region: region, backend: work)
    } catch let e as DeviceSetupError {
      throw Failure(e.description)
    }
    var server: IvshmemServer?
    if let socket = ivshmemSocket {
      let serverLog = log
      do {
        server = try IvshmemServer(
          socketPath: socket, sharedMemoryFD: region.fileDescriptor, vectors: vectors ?? min(queuePairs, 64),
          log: { serverLog.info("\($0)") })
      } catch {
        throw Failure(error.description)
      }
      device.useDoorbells(server!)
    }
    device.onEvent = events
    var signals = Self.blockStopSignals()
    let metrics = try startMetrics(
      DeviceMetrics(configuration: config, deviceLabel: path, vm: vm) { device.snapshot() }, log: log)

    device.announce(pid: UInt32(getpid()))
    server?.start()
    device.start()
    var serving: Logger.Metadata = [
      "path": "\(path)", "bytes": "\(region.size)", "memory": "\(config.memorySize >> 20) MiB",
      "backend": "\(device.backendName)", "queuePairs": "\(queuePairs)",
      "depth": "\(depth)", "staging": "\(slots) x \(slotSize) per queue pair", "pid": "\(getpid())",
    ]
    if config.hostWindow > 0 {
      let offset = config.hostWindowOffset
      serving["hostWindow"] = "\((UInt64(region.size) - offset) >> 20) MiB at BAR offset 0x\(String(offset, radix: 16))"
    }
    log.info("serving", metadata: serving)
    if let server {
      log.info(
        "ivshmem server listening",
        metadata: [
          "socket": "\(server.socketPath)",
          "qemu":
            "-chardev socket,path=\(server.socketPath),id=vgpu -device ivshmem-doorbell,chardev=vgpu,vectors=\(server.vectors),addr=05.0",
        ])
    }
    var received: Int32 = 0
    sigwait(&signals, &received)
    log.info("stopping", metadata: ["signal": "\(received == SIGINT ? "SIGINT" : "SIGTERM")"])
    metrics?.stop()
    device.stop()
    device.announce(pid: 0)
    server?.stop()
    let (allocated, _) = device.memoryInUse
    var facts: Logger.Metadata = ["memoryStillAllocated": "\(allocated)"]
    if let server {
      facts["doorbellWakeups"] = "\(server.doorbellsReceived)"
      facts["interruptsSent"] = "\(server.interruptsSent)"
    }
    log.info("stopped", metadata: facts)
  }

  /// The BAR file at `path`, created or taken over and locked, of the
  /// layout's size and its page-locked window's (a power of two for QEMU's
  /// ivshmem when `vm`); `option` names what gave the path, for the message
  /// when another mediator holds it.
  static func openBAR(_ path: String, configuration: ReferenceDeviceConfiguration, vm: Bool, option: String) throws
    -> MappedRegion
  {
    if let problem = notABAR(path) { throw Failure(problem) }
    // The lock comes first: the file of a live mediator must not be touched.
    do {
      // QEMU's ivshmem wants a power-of-two memory backend: round the file up in --vm mode.
      let window = configuration.hostWindow
      var size = Int(window > 0 ? configuration.hostWindowOffset + window : configuration.layout.regionSize)
      if vm { size = 1 << (Int.bitWidth - (size - 1).leadingZeroBitCount) }
      return try MappedRegion.sharedFile(path, create: size, exclusive: true)
    } catch {
      if error.errno == EWOULDBLOCK {
        throw Failure("\(path) is already served by \(holder(of: path)); stop it first, or use another \(option)")
      }
      throw Failure(error.description)
    }
  }

  /// One VM of several (`--vm-bar`) as it is served.
  private struct ServedVM {
    var bar: VMBar
    var region: MappedRegion
    var device: ReferenceDevice
    var server: IvshmemServer?
    /// Log lines about this VM carry `vm=NAME`.
    var log: Logger
  }

  /// Several VMs, each with its BAR file, device thread and ivshmem server,
  /// over one backend and one memory limit: one device, several tenants
  /// (docs/PROTOCOL.md §23.3), each also held to its own memory limit.
  private func serveVMs(
    _ configuration: ReferenceDeviceConfiguration, _ bars: [VMBar], driver: CUDADriver?, log: Logger
  ) throws {
    // No VM's staging is page-locked: one GPU backend serves every BAR, and
    // its copies go through the driver's bounce buffers (as for host processes).
    let work = try driver.map { try cudaBackend($0, staging: nil, log: log) }
    let shared: SharedExecution
    do { shared = try SharedExecution(configuration: configuration, backend: work) } catch {
      throw Failure(error.description)
    }
    var vms: [ServedVM] = []
    // A VM that cannot be set up stops the mediator before any VM is served.
    defer { if vms.count < bars.count { for vm in vms { vm.server?.stop() } } }
    for bar in bars {
      var config = configuration
      config.ownersAreLocalProcesses = false
      // Without doorbells nothing wakes the device from a VM: it looks often.
      if bar.socket == nil { config.wait.sleepSliceNanoseconds = 1_000_000 }
      // Each VM sees its own limit as the device's memory, and only its own use.
      config.memorySize = bar.memory ?? configuration.memorySize
      config.ownMemoryLimit = config.memorySize
      var vmLog = log
      vmLog[metadataKey: "vm"] = "\(bar.name)"
      config.hostWindow = bar.window ?? 0
      let region = try Self.openBAR(bar.path, configuration: config, vm: true, option: "--vm-bar file")
      let device: ReferenceDevice
      do { device = try ReferenceDevice(configuration: config, region: region, sharing: shared) } catch {
        throw Failure("--vm-bar \(bar.path): \(error.description)")
      }
      var server: IvshmemServer?
      if let socket = bar.socket {
        let serverLog = vmLog
        do {
          server = try IvshmemServer(
            socketPath: socket, sharedMemoryFD: region.fileDescriptor, vectors: vectors ?? min(queuePairs, 64),
            log: { serverLog.info("\($0)") })
        } catch {
          throw Failure("--vm-bar \(bar.path): \(error.description)")
        }
        device.useDoorbells(server!)
      }
      device.onEvent = Self.eventLogger(vmLog)
      vms.append(ServedVM(bar: bar, region: region, device: device, server: server, log: vmLog))
    }
    var signals = Self.blockStopSignals()
    let sources = vms.map { vm in
      let device = vm.device
      return DeviceMetrics.Source(
        labels: [("device", vm.bar.path), ("vm", vm.bar.name)], configuration: device.configuration
      ) { device.snapshot() }
    }
    let metrics = try startMetrics(DeviceMetrics(sources: sources, vm: true), log: log)
    for vm in vms {
      vm.device.announce(pid: UInt32(getpid()))
      vm.server?.start()
      vm.device.start()
      var facts: Logger.Metadata = [
        "path": "\(vm.bar.path)", "bytes": "\(vm.region.size)",
        "memory": "\(vm.device.configuration.memorySize >> 20) MiB",
      ]
      if let server = vm.server {
        facts["socket"] = "\(server.socketPath)"
        facts["qemu"] =
          "-chardev socket,path=\(server.socketPath),id=vgpu -device ivshmem-doorbell,chardev=vgpu,vectors=\(server.vectors),addr=05.0"
      }
      vm.log.info("serving VM", metadata: facts)
    }
    log.info(
      "serving VMs",
      metadata: [
        "vms": "\(vms.map(\.bar.name).joined(separator: ","))",
        "memory": "\(configuration.memorySize >> 20) MiB shared",
        "backend": "\(shared.backendName)", "queuePairs": "\(queuePairs) per VM", "depth": "\(depth)",
        "staging": "\(slots) x \(slotSize) per queue pair", "pid": "\(getpid())",
      ])
    var received: Int32 = 0
    sigwait(&signals, &received)
    log.info("stopping", metadata: ["signal": "\(received == SIGINT ? "SIGINT" : "SIGTERM")"])
    metrics?.stop()
    for vm in vms {
      vm.device.stop()
      vm.device.announce(pid: 0)
      vm.server?.stop()
      var facts: Logger.Metadata = ["memoryStillAllocated": "\(vm.device.memoryInUse.allocated)"]
      if let server = vm.server {
        facts["doorbellWakeups"] = "\(server.doorbellsReceived)"
        facts["interruptsSent"] = "\(server.interruptsSent)"
      }
      vm.log.info("stopped", metadata: facts)
    }
  }

  /// The host GPU's backend, its staging page-locked when there is one, with NVML if it loads.
  private func cudaBackend(_ driver: CUDADriver, staging: UnsafeMutableRawBufferPointer?, log: Logger) throws
    -> CUDABackend
  {
    let cuda: CUDABackend
    do { cuda = try CUDABackend(driver: driver, ordinal: gpu, staging: staging) } catch {
      throw Failure(error.description)
    }
    do {
      cuda.nvml = try HostNVML(path: nvmlLibrary, uuid: cuda.identity.uuidString)
      log.info("host NVML", metadata: ["library": "\(cuda.nvml!.path)"])
    } catch {
      log.warning("\(error.description)")
    }
    return cuda
  }

  /// Processes served at once unless --max-clients says otherwise.
  static let defaultMaxClients = 256

  /// "normal", "nice:N", "realtime" or "realtime:P" as a priority; nil when it is none.
  static func priority(_ text: String) -> ServingPool.Priority? {
    let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
    switch (parts.first, parts.count) {
    case ("normal", 1): return .normal
    case ("realtime", 1): return .realtime(1)
    case ("realtime", 2): return Int32(parts[1]).flatMap { (1...99).contains($0) ? .realtime($0) : nil }
    case ("nice", 2): return Int32(parts[1]).flatMap { (-20...19).contains($0) ? .nice($0) : nil }
    default: return nil
    }
  }
  /// A quarter of the cores, 1 to 4: enough threads to keep up with many
  /// processes' commands while the processes keep the rest of the cores.
  static var defaultServingThreads: Int { min(4, max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)) / 4)) }

  /// Each process served holds a few descriptors (its socket, its BAR's
  /// memfd, one per further connection), each waiter one: the soft limit
  /// (often 1024) is raised toward the hard one when `maxClients` needs more,
  /// and the log says so when even that is short.
  static func raiseDescriptorLimit(for maxClients: Int, log: Logger) {
    let needed = rlim_t(4 * maxClients + 64)
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < needed else { return }
    let soft = limit.rlim_cur
    limit.rlim_cur = min(needed, limit.rlim_max)
    if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) != 0 { limit.rlim_cur = soft }
    if limit.rlim_cur < needed {
      log.warning(
        "--max-clients \(maxClients) needs about \(needed) file descriptors; this process may open \(limit.rlim_cur): clients beyond that wait. Raise the limit (ulimit -n, systemd LimitNOFILE=) or lower --max-clients"
      )
    }
  }

  /// Signals are taken by sigwait on the main thread only: blocked before
  /// any other thread starts (devices, the HTTP server's Swift concurrency
  /// threads), so that they inherit the mask.
  static func blockStopSignals() -> sigset_t {
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    return signals
  }

  /// The metrics endpoint, bound before serving, so that an address in use
  /// stops the mediator before any client sees the device.
  private func startMetrics(_ metrics: @autoclosure () -> DeviceMetrics, log: Logger) throws -> MetricsServer? {
    guard let metricsListen, let address = MetricsAddress(metricsListen) else { return nil }
    let server = try MetricsServer(address: address, metrics: metrics())
    log.info(
      "metrics listening",
      metadata: ["address": "\(server.listening)", "url": "http://\(server.listening)/metrics"])
    return server
  }

  /// /run/vgpu/vgpu0.sock where /run/vgpu can be made (or is writable), else /dev/shm/vgpu0.sock.
  static func defaultSocket() -> String {
    let directory = (HostSocketPath.standard as NSString).deletingLastPathComponent
    if mkdir(directory, 0o755) == 0 || (errno == EEXIST && access(directory, W_OK) == 0) {
      return HostSocketPath.standard
    }
    return HostSocketPath.fallback
  }

  /// What the device reports (attached, released, faulted) as log lines.
  static func eventLogger(_ events: Logger) -> @Sendable (DeviceEvent) -> Void {
    { event in
      switch event {
      case .attached(let qp, let pid):
        events.info("client attached", metadata: ["pid": "\(pid)", "queuePair": "\(qp)"])
      case .released(let qp, let pid, let reason, let count, let bytes):
        let level: Logger.Level = reason == .closed ? .info : .notice
        events.log(
          level: level, "queue pair released: \(reason)",
          metadata: ["pid": "\(pid)", "queuePair": "\(qp)", "allocations": "\(count)", "bytes": "\(bytes)"])
      case .faulted(let qp, let pid, let fault):
        events.warning(
          "queue pair faulted: a doorbell index was out of range",
          metadata: ["pid": "\(pid)", "queuePair": "\(qp)", "fault": "\(fault)"])
      case .suppressed(let qp, let count):
        events.warning(
          "\(count) events of one queue pair not logged: its client changes the pair's state faster than \(EventBudget.perSecond) times a second",
          metadata: ["queuePair": "\(qp)"])
      }
    }
  }

  /// "12.8" → 12080, as CUDA numbers versions (1000 × major + 10 × minor).
  static func cudaVersion(_ text: String) -> UInt32? {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]), (1...99).contains(major),
      minor < 100
    else { return nil }
    return major * 1000 + minor * 10
  }

  /// Why the file at `path` must not become a BAR (it would be resized and overwritten), or
  /// nil: a new or empty file, an earlier BAR (the vGPU magic first), or a file whose first
  /// register block is all zeros (a mediator stopped before writing it) may be taken.
  static func notABAR(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { return nil }  // missing (created), or refused later with the reason
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size > 0 else { return nil }
    var head = [UInt8](repeating: 0, count: Int(Register.blockSize))
    let n = head.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
    guard n > 0 else { return nil }
    let magic = n >= 4 ? head.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } : 0
    if magic == vgpuMagic || head[..<n].allSatisfy({ $0 == 0 }) { return nil }
    return
      "\(path) holds \(st.st_size) bytes that are not a vGPU BAR (no vGPU register block): the mediator would resize and overwrite it; give --path a new file on tmpfs (/dev/shm/NAME) or remove that one"
  }

  /// Who holds the lock on `path`, as the register block says (best effort).
  static func holder(of path: String) -> String {
    guard let r = try? MappedRegion.sharedFile(path), r.size >= Register.blockSize,
      RegisterBlock(r.base).load(Register.magic) == vgpuMagic
    else { return "another process" }
    let pid = RegisterBlock(r.base).load(Register.devicePID)
    return pid == 0 ? "another process" : "vgpu-mediator pid \(pid)"
  }
}

struct Failure: Error, CustomStringConvertible {
  var description: String
  init(_ d: String) { description = d }
}

/// Sizes as people write them: 80G, 512M, 256K, or a byte count.
enum Size {
  static func parse(_ text: String) -> UInt64? {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    var digits = Substring(text.uppercased())
    if digits.hasSuffix("B") { digits = digits.dropLast() }
    var multiplier: UInt64 = 1
    if let last = digits.last, let m = units[last] {
      multiplier = m
      digits = digits.dropLast()
    }
    guard let n = UInt64(digits), n > 0 else { return nil }
    let (v, overflow) = n.multipliedReportingOverflow(by: multiplier)
    return overflow ? nil : v
  }
}

/// One line on standard error, written whole.
func printError(_ line: String) {
  let text = line + "\n"
  _ = text.withCString { write(2, $0, strlen($0)) }
}

@main
enum Main {
  static func main() {
    do {
      var command = try Mediator.parseAsRoot()
      try command.run()
    } catch let failure as Failure {
      printError("vgpu-mediator: \(failure)")
      exit(1)
    } catch {
      let code = Mediator.exitCode(for: error)
      if code == .success {
        print(Mediator.fullMessage(for: error))
        exit(0)
      }
      printError("vgpu-mediator: \(Mediator.message(for: error)) (see 'vgpu-mediator --help')")
      exit(code == .validationFailure ? 2 : 1)
    }
  }
}
