import CSupport
import Glibc
import Testing
import VGPUProtocol

@testable import VGPUDevice

/// Issue 17: a side spins for the other only while the other can run. The
/// device publishes its CPU when it posts, and a pass that answered a guest
/// waiting (asleep or spinning) on the serving thread's own CPU tells the
/// serving loop to sleep instead of spinning (the guest could not run until
/// the spin ended).
@Suite struct SpinPlacementTests {
  @Test func devicePublishesItsCPUWhenItPosts() throws {
    let h = try Harness()
    h.claim(0)
    let view = h.queues[0]!.view
    #expect(view.deviceCPU != 0, "the identify's completion came with no CPU")
    #expect(view.deviceCPU <= UInt32(sysconf(Int32(_SC_NPROCESSORS_CONF))))
    // Reclaiming the pair clears both hints.
    h.release(0)
    h.claim(0, identify: false)
    #expect(view.deviceCPU == 0 && view.guestCPU == 0)
  }

  @Test func answeringAGuestOnTheServingCPUStopsTheSpin() throws {
    let h = try Harness()
    h.claim(0)
    let view = h.queues[0]!.view
    let executor = h.device.executor
    // A guest asleep on another CPU (or on none known): the device spins on.
    view.setGuestWaiting(true)
    view.publishGuestCPU(0)
    h.expect(Command.Nop().entry, .success)
    #expect(!executor.answeredGuestOnThisCPU)
    // The hand-driven pass runs on this thread; a migration between the two
    // reads is retried.
    func answeredHere() -> Bool {
      for _ in 0..<20 {
        view.publishGuestCPU(vgpu_current_cpu())
        h.expect(Command.Nop().entry, .success)
        defer { executor.answeredGuestOnThisCPU = false }
        if executor.answeredGuestOnThisCPU { return true }
      }
      return false
    }
    // Asleep on this thread's CPU: the pass says so.
    #expect(answeredHere())
    // Spinning (not asleep) on this CPU: it runs only once the device thread
    // gets off the core too (sooner than that when the device has the higher priority).
    view.setGuestWaiting(false)
    #expect(answeredHere())
  }
}
