// cuemu/fiber.h - minimal stackful fibers for the CUDA-on-CPU emulator.
//
// x86-64: a hand-written context switch (callee-saved GPRs + rsp), ~20 instructions, no syscalls.
// mxcsr / x87 control word are copied from the creating thread into each new fiber but not switched
// (fnstcw/fldcw were 80% of the switch cost); device code cannot change rounding modes anyway. Elsewhere (or with -DCUEMU_USE_UCONTEXT): ucontext fallback
// (swapcontext does a sigprocmask syscall per switch, ~8x slower).
// Stacks are mmap'd with a PROT_NONE guard page below them and pooled process-wide.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__) && !defined(CUEMU_USE_UCONTEXT)
#define CUEMU_FIBER_ASM 1
#else
#define CUEMU_FIBER_ASM 0
#include <ucontext.h>
#endif

#if CUEMU_FIBER_ASM
extern "C" {
// Saves callee-saved state on the current stack, stores rsp into *save_sp, switches to new_sp.
__attribute__((visibility("hidden"))) void cuemu_ctx_switch_v1(void** save_sp, void* new_sp);
// First "return address" of a fresh fiber: calls r13(r12).
__attribute__((visibility("hidden"))) void cuemu_fiber_trampoline_v1();
}
// Weak so that every translation unit including this header may define it (the linker keeps one).
asm(R"(
    .text
    .p2align 4
    .weak cuemu_ctx_switch_v1
    .hidden cuemu_ctx_switch_v1
    .type cuemu_ctx_switch_v1,@function
cuemu_ctx_switch_v1:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuemu_ctx_switch_v1, .-cuemu_ctx_switch_v1

    .p2align 4
    .weak cuemu_fiber_trampoline_v1
    .hidden cuemu_fiber_trampoline_v1
    .type cuemu_fiber_trampoline_v1,@function
cuemu_fiber_trampoline_v1:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cuemu_fiber_trampoline_v1, .-cuemu_fiber_trampoline_v1
)");
#endif

namespace cuemu {
namespace detail {

struct Stack {
  void* base = nullptr;  // lowest usable address (guard page lies below)
  size_t size = 0;       // usable bytes
};

class StackPool {
 public:
  Stack acquire(size_t size) {
    {
      std::lock_guard<std::mutex> g(mu_);
      while (!free_.empty()) {
        Stack s = free_.back();
        free_.pop_back();
        if (s.size == size) return s;
        unmap(s);  // stack size changed (CUEMU_STACK_KB): drop old ones
      }
    }
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size = (size + page - 1) / page * page;
    void* p = mmap(nullptr, size + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuemu: mmap of a fiber stack failed");
    mprotect(p, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    Stack s;
    s.base = static_cast<char*>(p) + page;
    s.size = size;
    return s;
  }
  void release(std::vector<Stack>& stacks) {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& s : stacks)
      if (s.base) free_.push_back(s);
    stacks.clear();
  }

 private:
  static void unmap(const Stack& s) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    munmap(static_cast<char*>(s.base) - page, s.size + page);
  }
  std::mutex mu_;
  std::vector<Stack> free_;
};

inline StackPool& stack_pool() {
  static StackPool* p = new StackPool();  // intentionally leaked (no destruction-order issues)
  return *p;
}

struct FiberCtx {
#if CUEMU_FIBER_ASM
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

using FiberEntry = void (*)(void*);

#if !CUEMU_FIBER_ASM
inline void ucontext_entry_(unsigned hi_fn, unsigned lo_fn, unsigned hi_arg, unsigned lo_arg) {
  auto fn = reinterpret_cast<FiberEntry>((static_cast<uintptr_t>(hi_fn) << 32) | lo_fn);
  void* arg = reinterpret_cast<void*>((static_cast<uintptr_t>(hi_arg) << 32) | lo_arg);
  fn(arg);
}
#endif

// Prepare `c` so that switching to it runs entry(arg) on `stack`. entry must never return.
inline void fiber_init(FiberCtx* c, const Stack& stack, FiberEntry entry, void* arg) {
#if CUEMU_FIBER_ASM
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack.base) + stack.size) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 80);
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  sp[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpcw) << 32);  // (padding slot)
  sp[1] = 0;                                        // r15
  sp[2] = 0;                                        // r14
  sp[3] = reinterpret_cast<uint64_t>(entry);        // r13
  sp[4] = reinterpret_cast<uint64_t>(arg);          // r12
  sp[5] = 0;                                        // rbx
  sp[6] = 0;                                        // rbp
  sp[7] = reinterpret_cast<uint64_t>(&cuemu_fiber_trampoline_v1);  // return address
  c->sp = sp;
#else
  if (getcontext(&c->uc) != 0) throw std::runtime_error("cuemu: getcontext failed");
  c->uc.uc_stack.ss_sp = stack.base;
  c->uc.uc_stack.ss_size = stack.size;
  c->uc.uc_link = nullptr;
  uintptr_t f = reinterpret_cast<uintptr_t>(entry), a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&c->uc, reinterpret_cast<void (*)()>(&ucontext_entry_), 4,
              static_cast<unsigned>(f >> 32), static_cast<unsigned>(f & 0xffffffffu),
              static_cast<unsigned>(a >> 32), static_cast<unsigned>(a & 0xffffffffu));
#endif
}

// Switch from the running context (saved into `from`) to `to`.
inline void fiber_switch(FiberCtx* from, FiberCtx* to) {
  asm volatile("" ::: "memory");
#if CUEMU_FIBER_ASM
  cuemu_ctx_switch_v1(&from->sp, to->sp);
#else
  swapcontext(&from->uc, &to->uc);
#endif
  asm volatile("" ::: "memory");
}

}  // namespace detail
}  // namespace cuemu
