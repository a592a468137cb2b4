import PTX
import Synchronization
import Testing

@Suite struct ErrorTests {
  @Test func parseErrorHasLineAndToken() {
    let src =
      header + """
        .visible .entry k()
        {
        	.reg .b32 %r<2>;
        	mov.u32 %r1, ;
        }
        """
    // A broken body fails only that function; the error keeps line and token.
    let m = try? PTXModule(source: src)
    #expect(m != nil)
    do {
      _ = try m?.kernel(named: "k")
      Issue.record("expected an error")
    } catch {
      #expect(error.cudaError == 218)
      #expect(error.description.contains("line 10"))
      #expect(error.description.contains("';'"))
    }
    do {
      _ = try PTXModule(source: "garbage here")
      Issue.record("expected an error")
    } catch {
      guard case .parse(let line, let token, _) = error else {
        Issue.record("wrong error \(error)")
        return
      }
      #expect(line == 1)
      #expect(token == "garbage")
    }
    #expect(throws: PTXError.self) { try PTXModule(source: ".target sm_75\n") }
  }

  /// `.target` takes architectures and PTX's modifiers; a word that is neither fails the
  /// module (218 with its line), any architecture number is run (the engine interprets).
  @Test func targetIsAnArchitecture() throws {
    let body = "\n.address_size 64\n.visible .entry k()\n{\n\tret;\n}\n"
    for good in ["sm_90", "sm_90a", "sm_100f", "compute_75", "sm_52, texmode_independent", "sm_75, debug"] {
      _ = try PTXModule(source: ".version 8.0\n.target \(good)" + body)
    }
    for bad in ["bogus_arch", "sm_", "sm_9x", "compute_", "sm_90b", "gfx90a"] {
      do {
        _ = try PTXModule(source: ".version 8.0\n.target \(bad)" + body)
        Issue.record("'.target \(bad)' loaded")
      } catch {
        #expect(error.cudaError == 218)
        #expect(
          error.description.contains("line 2") && error.description.contains("a target such as sm_90"), "\(error)")
      }
    }
  }

  /// A double literal as an integer operand is its value, truncated; one that no
  /// Int64 holds (inf, NaN, 1e300) is an error in that function, not a trap
  /// (found by Fuzz/module-image).
  @Test(arguments: ["0d7FF0000000000000", "0d7FF8000000000000", "0d7E37E43C8800759C"])
  func anUnconvertibleDoubleLiteralIsAnError(literal: String) throws {
    let m = try PTXModule(
      source: header + """
        .visible .entry k()
        {
        	.reg .b64 %rd<3>;
        	add.s64 %rd1, %rd2, \(literal);
        }
        """)
    #expect(throws: PTXError.self) { _ = try m.kernel(named: "k") }
    let fine = try PTXModule(
      source: header + """
        .visible .entry k()
        {
        	.reg .b64 %rd<3>;
        	add.s64 %rd1, %rd2, 0dC004000000000000;
        }
        """)
    _ = try fine.kernel(named: "k")
  }

  @Test func badFunctionFailsAlone() throws {
    let src =
      vectorAddPTX + """

        .visible .entry broken(.param .u64 p)
        {
        	.reg .b32 %r<2>;
        	add.u32 %r1, %r1 %r1;
        }
        """
    let m = try PTXModule(source: src)
    #expect(m.kernelNames == ["_Z6vecAddPKfS0_Pfi", "broken"])
    #expect(throws: PTXError.self) { try m.kernel(named: "broken") }
    #expect(throws: PTXError.functionNotFound(name: "nope")) { try m.kernel(named: "nope") }
    let mem = TestMemory()
    let a = mem.upload([Float(1), 2])
    let info = try m.kernel(named: "_Z6vecAddPKfS0_Pfi")
    _ = try m.launch(
      kernel: info.name, grid: PTXDim3(1), block: PTXDim3(2), parameters: pack(info, [a, a, a, Int32(2)]), memory: mem)
    #expect(mem.download(a, count: 2, as: Float.self) == [2, 4])
  }

  @Test func outOfBoundsStoreNamesThread() throws {
    let mem = TestMemory()
    let a = mem.upload([Float](repeating: 1, count: 40))
    let c = mem.alloc(40 * 4)
    do {
      // n = 64 but the arrays hold 40: thread 40 faults first.
      try run(vectorAddPTX, "_Z6vecAddPKfS0_Pfi", block: PTXDim3(64), args: [a, a, c, Int32(64)], memory: mem)
      Issue.record("expected an illegal address")
    } catch let e as PTXError {
      guard case .illegalAddress(_, _, let thread, let address, let size, _, _) = e else {
        Issue.record("wrong error \(e)")
        return
      }
      #expect(thread == PTXDim3(40, 0, 0))
      #expect(address == a + 160)
      #expect(size == 4)
      #expect(e.cudaError == 700)
    }
  }

  /// A shared or local address within the access's size of 2^64 is an illegal address, not a
  /// trap of the device process (`addr + size` wraps past a bound check on the sum alone).
  @Test func sharedAndLocalAddressesNear2To64Fault() throws {
    for (space, decl) in [("shared", ".shared .align 4 .b8 s[16];"), ("local", ".local .align 4 .b8 s[16];")] {
      for op in ["ld.\(space).u32 %r1, [%rd1];", "st.\(space).u32 [%rd1], %r1;"] {
        let src =
          header + """
            .visible .entry wrap()
            {
            \t.reg .b32 %r<2>;
            \t.reg .b64 %rd<2>;
            \t\(decl)
            \tmov.u64 %rd1, -4;
            \tmov.u32 %r1, 7;
            \t\(op)
            \tret;
            }
            """
        do {
          try run(src, "wrap", block: PTXDim3(1), args: [], memory: TestMemory())
          Issue.record("\(op) at 2^64 - 4 ran")
        } catch let e as PTXError {
          guard case .illegalAddress(_, _, _, let address, _, _, _) = e else {
            Issue.record("\(op): wrong error \(e)")
            continue
          }
          #expect(address == UInt64.max - 3, "\(op)")
        }
      }
    }
  }

  @Test func endlessLoopHitsBudget() throws {
    let src =
      header + """
        .visible .entry spin()
        {
        $L__BB0_1:
        	bra.uni 	$L__BB0_1;
        }
        """
    #expect(throws: PTXError.budgetExhausted(kernel: "spin", budget: 10_000)) {
      try run(src, "spin", block: PTXDim3(32), args: [], memory: TestMemory(), budget: 10_000)
    }
  }

  /// Progress counts the launch's instructions: a grid of many short
  /// threads (none loops) reports it too, and a false answer stops the launch.
  @Test func manyShortThreadsReportProgress() throws {
    let n = 1 << 14
    let memory = TestMemory()
    let (a, b, c) = (
      memory.upload([Float](repeating: 1, count: n)), memory.upload([Float](repeating: 2, count: n)),
      memory.alloc(n * 4)
    )
    let module = try PTXModule(source: vectorAddPTX)
    let info = try module.kernel(named: "_Z6vecAddPKfS0_Pfi")
    let calls = Mutex(0)
    var options = PTXLaunchOptions(progress: {
      calls.withLock { $0 += 1 }
      return true
    })
    options.progressInterval = 1 << 12
    let stats = try module.launch(
      kernel: "_Z6vecAddPKfS0_Pfi", grid: PTXDim3(UInt32(n / 256)), block: PTXDim3(256),
      parameters: pack(info, [a, b, c, Int32(n)]), memory: memory, options: options)
    let reported = calls.withLock { $0 }
    #expect(reported > 0 && UInt64(reported) <= stats.instructions / (1 << 12), "\(reported) calls")
    options.progress = { false }
    #expect(throws: PTXError.self) {
      try module.launch(
        kernel: "_Z6vecAddPKfS0_Pfi", grid: PTXDim3(UInt32(n / 256)), block: PTXDim3(256),
        parameters: pack(info, [a, b, c, Int32(n)]), memory: memory, options: options)
    }
  }

  @Test func divergentBarrierDeadlocks() throws {
    // Even threads wait at barrier 1, odd ones at barrier 2; none exits, nothing can release.
    let src =
      header + """
        .visible .entry dl()
        {
        	.reg .pred 	%p<2>;
        	.reg .b32 	%r<3>;
        	mov.u32 	%r1, %tid.x;
        	and.b32 	%r2, %r1, 1;
        	setp.eq.s32 	%p1, %r2, 0;
        	@%p1 bra 	$L__BB0_2;
        	bar.sync 	2;
        	ret;
        $L__BB0_2:
        	bar.sync 	1;
        	ret;
        }
        """
    do {
      try run(src, "dl", block: PTXDim3(64), args: [], memory: TestMemory())
      Issue.record("expected a deadlock")
    } catch let e as PTXError {
      guard case .deadlock = e else {
        Issue.record("wrong error \(e)")
        return
      }
      #expect(e.cudaError == 719)
      #expect(e.description.contains("bar.sync 1"))
    }
  }

  @Test func exitCountsAsBarrierArrival() throws {
    // Threads ≥ 16 exit before the barrier; the rest must still pass it.
    let src =
      header + """
        .visible .entry early(.param .u64 out)
        {
        	.reg .pred 	%p<2>;
        	.reg .b32 	%r<3>;
        	.reg .b64 	%rd<4>;
        	ld.param.u64 	%rd1, [out];
        	mov.u32 	%r1, %tid.x;
        	setp.ge.u32 	%p1, %r1, 16;
        	@%p1 exit;
        	bar.sync 	0;
        	mul.wide.u32 	%rd2, %r1, 4;
        	add.s64 	%rd3, %rd1, %rd2;
        	st.global.u32 	[%rd3], 7;
        	ret;
        }
        """
    let mem = TestMemory()
    let out = mem.alloc(64 * 4)
    try run(src, "early", block: PTXDim3(64), args: [out], memory: mem)
    #expect(
      mem.download(out, count: 64, as: UInt32.self) == Array(repeating: 7, count: 16) + Array(repeating: 0, count: 48))
  }
}

@Suite struct WarpTests {
  /// Lanes < 16 ballot with mask 0x0000ffff, lanes ≥ 16 vote.any with mask 0xffff0000, then a
  /// full-warp shfl.idx and shfl.up with the predicate; results per lane go to `out`.
  static let src =
    header + """
      .visible .entry warp(.param .u64 out)
      {
      	.reg .pred 	%p<6>;
      	.reg .b32 	%r<12>;
      	.reg .b64 	%rd<4>;
      	ld.param.u64 	%rd1, [out];
      	mov.u32 	%r1, %laneid;
      	and.b32 	%r2, %r1, 1;
      	setp.eq.s32 	%p1, %r2, 1;
      	setp.ge.u32 	%p2, %r1, 16;
      	@%p2 bra 	$L__hi;
      	vote.sync.ballot.b32 	%r3, %p1, 0x0000ffff;
      	bra.uni 	$L__join;
      $L__hi:
      	setp.eq.s32 	%p3, %r1, 20;
      	vote.sync.any.pred 	%p4, %p3, 0xffff0000;
      	selp.u32 	%r3, 100, 200, %p4;
      $L__join:
      	shfl.sync.idx.b32 	%r4, %r1, 5, 31, -1;
      	shfl.sync.up.b32 	%r5|%p5, %r1, 3, 0, -1;
      	selp.u32 	%r6, 1, 0, %p5;
      	shfl.sync.bfly.b32 	%r7, %r1, 1, 31, -1;
      	activemask.b32 	%r8;
      	vote.sync.all.pred 	%p3, %p1, -1;
      	selp.u32 	%r9, 1, 0, %p3;
      	mul.wide.u32 	%rd2, %r1, 32;
      	add.s64 	%rd3, %rd1, %rd2;
      	st.global.v4.u32 	[%rd3], {%r3, %r4, %r5, %r6};
      	st.global.v4.u32 	[%rd3+16], {%r7, %r8, %r9, %r1};
      	ret;
      }
      """

  @Test func divergentVoteAndShuffle() throws {
    let mem = TestMemory()
    let out = mem.alloc(32 * 32)
    try run(Self.src, "warp", block: PTXDim3(32), args: [out], memory: mem)
    let r = mem.download(out, count: 32 * 8, as: UInt32.self)
    for lane in 0..<32 {
      let row = Array(r[lane * 8..<lane * 8 + 8])
      #expect(row[0] == (lane < 16 ? 0xaaaa : 100), "lane \(lane)")
      #expect(row[1] == 5)
      #expect(row[2] == UInt32(lane >= 3 ? lane - 3 : lane))
      #expect(row[3] == (lane >= 3 ? 1 : 0))
      #expect(row[4] == UInt32(lane ^ 1))
      #expect(row[5] == 0xffff_ffff)
      #expect(row[6] == 0)
      #expect(row[7] == UInt32(lane))
    }
  }
}
