import VGPUProtocol

extension Executor {
  /// Runs one command for queue pair `qp` and returns its completion (the
  /// serving loop sets its id, head and phase). The one place an opcode
  /// meets its handler: each decodes its arguments with the protocol's
  /// typed command and lives in its family's file (Commands+Memory,
  /// +Modules, +Sync, +Info).
  func execute(_ e: SubmissionEntry, qp: Int) -> CompletionEntry {
    do throws(Refusal) {
      // Flags first (an unknown opcode allows none), then the opcode: PROTOCOL.md §14's order.
      let known = Opcode(rawValue: e.opcode)
      guard e.flags & ~(known?.allowedFlags ?? 0) == 0, e.reserved == 0 else {
        throw Refusal(status: .invalidValue, detail: 0)
      }
      guard let op = known else { throw Refusal(status: .invalidOpcode) }
      if op != .identify && op != .nop && !served[qp].identified { throw Refusal(status: .notInitialized) }
      switch op {
      case .nop: return CompletionEntry(status: .success)
      case .identify: return try identify(Command.Identify(e), qp: qp)
      case .memoryInfo: return memoryInfo()
      case .alloc: return try alloc(Command.Alloc(e), qp: qp)
      case .free: return try free(Command.Free(e), qp: qp)
      case .copyToDevice: return try copyToDevice(Command.CopyToDevice(e), qp: qp)
      case .copyFromDevice: return try copyFromDevice(Command.CopyFromDevice(e), qp: qp)
      case .copyDeviceToDevice: return try copyDeviceToDevice(Command.CopyDeviceToDevice(e), qp: qp)
      case .memset: return try memset(Command.Memset(e), qp: qp)
      case .hostMemoryShare: return try hostMemoryShare(Command.HostMemoryShare(e), qp: qp)
      case .hostMemoryUnshare: return try hostMemoryUnshare(Command.HostMemoryUnshare(e), qp: qp)
      case .copyFromHost: return try copyFromHost(Command.CopyFromHost(e), qp: qp)
      case .copyToHost: return try copyToHost(Command.CopyToHost(e), qp: qp)
      case .windowAlloc: return try windowAlloc(Command.WindowAlloc(e), qp: qp)
      case .windowFree: return try windowFree(Command.WindowFree(e), qp: qp)
      case .moduleLoad: return try moduleLoad(Command.ModuleLoad(e), qp: qp)
      case .moduleUnload: return try moduleUnload(Command.ModuleUnload(e), qp: qp)
      case .getFunction: return try getFunction(Command.GetFunction(e), qp: qp)
      case .launch: return try launch(Command.Launch(e), qp: qp)
      case .streamCreate: return streamCreate(qp: qp)
      case .streamDestroy: return try streamDestroy(Command.StreamDestroy(e), qp: qp)
      case .streamSynchronize: return try streamSynchronize(Command.StreamSynchronize(e), qp: qp)
      case .eventCreate: return try eventCreate(qp: qp)
      case .eventDestroy: return try eventDestroy(Command.EventDestroy(e), qp: qp)
      case .eventRecord: return try eventRecord(Command.EventRecord(e), qp: qp)
      case .eventQuery: return try eventQuery(Command.EventQuery(e), qp: qp)
      case .eventElapsed: return try eventElapsed(Command.EventElapsed(e), qp: qp)
      case .statistics: return try statistics(Command.Statistics(e), qp: qp)
      case .processes: return try processes(Command.Processes(e), qp: qp)
      case .moduleUpload: return try moduleUpload(Command.ModuleUpload(e), qp: qp)
      case .moduleGlobal: return try moduleGlobal(Command.ModuleGlobal(e), qp: qp)
      case .output: return try output(Command.Output(e), qp: qp)
      case .errorText: return try errorText(Command.ErrorText(e), qp: qp)
      case .moduleKernels: return try moduleKernels(Command.ModuleKernels(e), qp: qp)
      }
    } catch {
      served[qp].errorText =
        error.message.isEmpty
        ? "\(Opcode(rawValue: e.opcode).map { "\($0)" } ?? "opcode \(e.opcode)"): \(error.status) (detail \(error.detail))"
        : error.message
      return CompletionEntry(
        status: error.status, result0: error.result0, result1: error.result1, detail: error.detail)
    }
  }
}
