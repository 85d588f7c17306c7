"""``prefetch(array, i)``: ask the CPU to start loading ``array[i]``'s cache line (for writing).

Kernels that update per-slot state at random slots (one record per slot, ``FusedRules``) spend
most of their time waiting for those cache lines. A loop body that does a lot of work per row
leaves the CPU little room to overlap the misses of later rows by itself; prefetching the slot
a few rows ahead does it explicitly. A prefetch is only a hint: it never faults, not even on a
bad address, and changes no result.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, idx):
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, rw = 1: for writing, locality = 3: keep in all cache levels, cache type = 1: data)
        builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
