//! One kernel of the kernel IR as one Cranelift function.
//!
//! Every generated function has the signature of [`KernelFn`](super::KernelFn):
//! `(buffers, sizes, row_begin, row_end, col_begin, col_end)`. Rows are the
//! flattened leading axes of the kernel's domain, columns its last axis, so
//! the runtime can split the work across threads at any row (and, for
//! element-wise kernels and Gemm epilogues, column) boundary. Lengths are
//! never baked in: every symbolic stride, offset and extent is read from
//! the `sizes` table (evaluated by the runtime once per run), in the order
//! of [`size_table`].
//!
//! Inner loops run four lanes at a time (`f32x4`, `i32x4`, bool as an
//! `i32x4` mask) and finish with a one-lane tail that uses the same math,
//! so results do not depend on where a lane falls.

use super::math::{Math, lane_flags};
use crate::ir::{BinaryOp, DType, Dim, ReduceOp, UnaryOp};
use crate::kernel::{Body, Inst, Size, Stage, View};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I8, I32, I32X4, I64};
use cranelift_codegen::ir::{FuncRef, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use std::collections::HashMap;

/// Scalar helpers the generated code calls (registered with the JIT).
#[derive(Clone, Copy)]
pub struct Externs {
    pub logf: FuncRef,
    pub sinf: FuncRef,
    pub cosf: FuncRef,
    pub powf: FuncRef,
    pub ipow: FuncRef,
}

/// Where one load (or the store) of a body reads at the current row.
#[derive(Clone, Copy)]
struct Access {
    /// Byte address of column 0 of the current row.
    row: Value,
    /// Stride along the columns, in elements.
    stride: Stride,
    dtype: DType,
}

#[derive(Clone, Copy)]
enum Stride {
    Const(i64),
    Dyn(Value),
}

/// Every non-constant size a kernel reads, in table order.
pub fn size_table<'a>(
    views: impl IntoIterator<Item = &'a View>,
    dims: &[Dim],
    bodies: &[&Body],
) -> Vec<Size> {
    let mut t: Vec<Size> = Vec::new();
    let mut add = |s: Size| {
        if s.as_const().is_none() && !t.contains(&s) {
            t.push(s);
        }
    };
    for v in views {
        add(v.offset.clone());
        for s in &v.strides {
            add(s.clone());
        }
    }
    for d in dims {
        add(Size::from_dim(d));
    }
    for b in bodies {
        for (i, _) in &b.insts {
            if let Inst::Size(s) = i {
                add(s.clone());
            }
        }
    }
    t
}

/// Function-wide state: the loaded size table, buffer base pointers, helpers.
pub struct Gen<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    pub ext: Externs,
    sizes: HashMap<Size, Value>,
    bases: HashMap<usize, Value>,
    pub params: [Value; 6],
}

/// In bounds by construction (the fused views), but not necessarily
/// aligned: vector accesses may start at any element.
fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn esize(dt: DType) -> i64 {
    crate::kernel::dtype_bytes(dt)
}

impl<'a, 'b> Gen<'a, 'b> {
    /// Emit the entry block: parameters, the size table and buffer bases.
    pub fn new(
        b: &'a mut FunctionBuilder<'b>,
        ext: Externs,
        table: &[Size],
        buffers: &[usize],
    ) -> Self {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let params = [p[0], p[1], p[2], p[3], p[4], p[5]];
        let mut sizes = HashMap::new();
        for (i, s) in table.iter().enumerate() {
            let v = b.ins().load(I64, mem(), params[1], (8 * i) as i32);
            sizes.insert(s.clone(), v);
        }
        let mut bases = HashMap::new();
        for &buf in buffers {
            bases
                .entry(buf)
                .or_insert_with(|| b.ins().load(I64, mem(), params[0], (8 * buf) as i32));
        }
        Gen {
            b,
            ext,
            sizes,
            bases,
            params,
        }
    }

    fn math(&mut self, lanes: u8) -> Math<'_, 'b> {
        Math { b: self.b, lanes }
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    /// A size as an i64 value.
    fn size(&mut self, s: &Size) -> Value {
        match s.as_const() {
            Some(c) => self.iconst(c),
            None => self.sizes[s],
        }
    }

    fn dim(&mut self, d: &Dim) -> Value {
        self.size(&Size::from_dim(d))
    }

    /// Split a flat row index into the indices of `dims` (row-major).
    fn unflatten(&mut self, row: Value, dims: &[Dim]) -> Vec<Value> {
        let mut idx = vec![row; dims.len()];
        let mut rem = row;
        for k in (0..dims.len()).rev() {
            if k == 0 {
                idx[0] = rem;
                break;
            }
            let d = self.dim(&dims[k]);
            idx[k] = self.b.ins().urem(rem, d);
            rem = self.b.ins().udiv(rem, d);
        }
        idx
    }

    /// The access of `v` (over a domain whose leading axes are at `outer`).
    fn access(&mut self, v: &View, outer: &[Value], dtype: DType) -> Access {
        let mut off = self.size(&v.offset);
        for (k, &i) in outer.iter().enumerate() {
            let st = &v.strides[k];
            if st.is_zero() {
                continue;
            }
            let s = self.size(st);
            let t = self.b.ins().imul(i, s);
            off = self.b.ins().iadd(off, t);
        }
        let bytes = self.b.ins().imul_imm_s(off, esize(dtype));
        let row = self.b.ins().iadd(self.bases[&v.buf], bytes);
        let stride = match v.strides.last() {
            None => Stride::Const(0),
            Some(s) => match s.as_const() {
                Some(c) => Stride::Const(c),
                None => Stride::Dyn(self.size(s)),
            },
        };
        Access { row, stride, dtype }
    }

    /// Address of lane `lane` of column `j` of an access.
    fn addr(&mut self, a: &Access, j: Value, lane: i64) -> Value {
        let es = esize(a.dtype);
        match a.stride {
            Stride::Const(0) => a.row,
            Stride::Const(c) => {
                let t = self.b.ins().imul_imm_s(j, c * es);
                let r = self.b.ins().iadd(a.row, t);
                if lane == 0 {
                    r
                } else {
                    self.b.ins().iadd_imm_s(r, lane * c * es)
                }
            }
            Stride::Dyn(s) => {
                let jl = self.b.ins().iadd_imm_s(j, lane);
                let t = self.b.ins().imul(jl, s);
                let t = self.b.ins().imul_imm_s(t, es);
                self.b.ins().iadd(a.row, t)
            }
        }
    }

    fn scalar_load(&mut self, a: &Access, j: Value, lane: i64) -> Value {
        let p = self.addr(a, j, lane);
        let ty = match a.dtype {
            DType::F32 => F32,
            DType::I32 => I32,
            DType::Bool => I8,
        };
        self.b.ins().load(ty, mem(), p, 0)
    }

    /// A bool (i8 0/1) as a vector-lane mask value (i32 0/-1).
    fn bool_lane(&mut self, v: Value) -> Value {
        let w = self.b.ins().uextend(I32, v);
        self.b.ins().ineg(w)
    }

    fn load(&mut self, a: &Access, j: Value, lanes: u8) -> Value {
        if lanes == 1 {
            return self.scalar_load(a, j, 0);
        }
        let vty = vec_ty(a.dtype);
        match (a.stride, a.dtype) {
            (Stride::Const(1), DType::F32 | DType::I32) => {
                let p = self.addr(a, j, 0);
                self.b.ins().load(vty, mem(), p, 0)
            }
            (Stride::Const(0), _) => {
                let s = self.scalar_load(a, j, 0);
                let s = if a.dtype == DType::Bool {
                    self.bool_lane(s)
                } else {
                    s
                };
                self.b.ins().splat(vty, s)
            }
            _ => {
                let mut v: Option<Value> = None;
                for l in 0..4 {
                    let s = self.scalar_load(a, j, l);
                    let s = if a.dtype == DType::Bool {
                        self.bool_lane(s)
                    } else {
                        s
                    };
                    v = Some(match v {
                        None => self.b.ins().splat(vty, s),
                        Some(v) => self.b.ins().insertlane(v, s, l as u8),
                    });
                }
                v.expect("four lanes")
            }
        }
    }

    fn store(&mut self, a: &Access, j: Value, lanes: u8, x: Value) {
        if lanes == 1 {
            let p = self.addr(a, j, 0);
            self.b.ins().store(mem(), x, p, 0);
            return;
        }
        match (a.stride, a.dtype) {
            (Stride::Const(1), DType::F32 | DType::I32) => {
                let p = self.addr(a, j, 0);
                self.b.ins().store(mem(), x, p, 0);
            }
            _ => {
                for l in 0..4u8 {
                    let e = self.b.ins().extractlane(x, l);
                    let e = if a.dtype == DType::Bool {
                        let one = self.b.ins().band_imm_s(e, 1);
                        self.b.ins().ireduce(I8, one)
                    } else {
                        e
                    };
                    let p = self.addr(a, j, i64::from(l));
                    self.b.ins().store(mem(), e, p, 0);
                }
            }
        }
    }

    /// `one` (emitting scalar code) applied to every lane of `args`, the
    /// results gathered into a vector of type `ty` (or `one` itself when
    /// `lanes == 1`).
    fn per_lane(
        &mut self,
        args: &[Value],
        lanes: u8,
        ty: Type,
        one: &dyn Fn(&mut Self, &[Value]) -> Value,
    ) -> Value {
        if lanes == 1 {
            return one(self, args);
        }
        let mut out: Option<Value> = None;
        for l in 0..4u8 {
            let xs: Vec<Value> = args
                .iter()
                .map(|&a| self.b.ins().extractlane(a, l))
                .collect();
            let r = one(self, &xs);
            out = Some(match out {
                None => self.b.ins().splat(ty, r),
                Some(v) => self.b.ins().insertlane(v, r, l),
            });
        }
        out.expect("four lanes")
    }

    /// Call a scalar helper on every lane of `args`.
    fn lanewise(&mut self, f: FuncRef, args: &[Value], lanes: u8, ty: Type) -> Value {
        self.per_lane(args, lanes, ty, &|g, xs| {
            let c = g.b.ins().call(f, xs);
            g.b.inst_results(c)[0]
        })
    }

    /// i32 division lane by lane: zero divisors give 0 (lowering never
    /// divides by zero) and MIN / -1 wraps, as in the reference, instead of
    /// trapping.
    fn lanewise_idiv(&mut self, p: Value, q: Value, lanes: u8) -> Value {
        self.per_lane(&[p, q], lanes, I32X4, &|g, pq| {
            let (p, q) = (pq[0], pq[1]);
            let zero = g.b.ins().iconst(I32, 0);
            let one = g.b.ins().iconst(I32, 1);
            let is_zero = g.b.ins().icmp_imm_s(IntCC::Equal, q, 0);
            let is_m1 = g.b.ins().icmp_imm_s(IntCC::Equal, q, -1);
            let bad = g.b.ins().bor(is_zero, is_m1);
            let safe = g.b.ins().select(bad, one, q);
            let d = g.b.ins().sdiv(p, safe);
            let neg = g.b.ins().ineg(p);
            let d = g.b.ins().select(is_m1, neg, d);
            g.b.ins().select(is_zero, zero, d)
        })
    }

    /// The column index of each lane, as i32.
    fn iota(&mut self, j: Value, lanes: u8) -> Value {
        let j32 = self.b.ins().ireduce(I32, j);
        if lanes == 1 {
            return j32;
        }
        let zero = self.b.ins().iconst(I32, 0);
        let mut offs = self.b.ins().splat(I32X4, zero);
        for l in 1..4u8 {
            let step = self.b.ins().iconst(I32, i64::from(l));
            offs = self.b.ins().insertlane(offs, step, l);
        }
        let v = self.b.ins().splat(I32X4, j32);
        self.b.ins().iadd(v, offs)
    }

    /// Evaluate `body` at column `j` of the current row.
    #[allow(clippy::too_many_arguments)]
    fn body(
        &mut self,
        body: &Body,
        loads: &[Access],
        outer: &[Value],
        last_axis: usize,
        j: Value,
        reduced: &[Value],
        lanes: u8,
    ) -> Result<Value, String> {
        let mut vals: Vec<Value> = Vec::with_capacity(body.insts.len());
        for (inst, dt) in &body.insts {
            let dt = *dt;
            let v = match inst {
                Inst::Load(l) => {
                    let a = *loads.get(*l).ok_or("load out of range")?;
                    self.load(&a, j, lanes)
                }
                Inst::Const(c) => self.constant(*c, dt, lanes),
                Inst::Index(a) => {
                    if *a == last_axis {
                        self.iota(j, lanes)
                    } else {
                        let i = *outer.get(*a).ok_or("index axis out of range")?;
                        let i = self.b.ins().ireduce(I32, i);
                        self.splat(i, I32X4, lanes)
                    }
                }
                Inst::Size(s) => {
                    let v = self.size(s);
                    let v = self.b.ins().ireduce(I32, v);
                    self.splat(v, I32X4, lanes)
                }
                Inst::Reduced(s) => {
                    let r = *reduced.get(*s).ok_or("reduced stage out of range")?;
                    let r = if lanes != 1 && dt == DType::Bool {
                        self.bool_lane(r)
                    } else {
                        r
                    };
                    self.splat(r, vec_ty(dt), lanes)
                }
                Inst::Unary(op, x) => {
                    let xt = body.insts[*x].1;
                    self.unary(*op, vals[*x], xt, lanes)?
                }
                Inst::Binary(op, x, y) => {
                    let xt = body.insts[*x].1;
                    self.binary(*op, vals[*x], vals[*y], xt, lanes)?
                }
                Inst::Select(c, x, y) => {
                    let (c, x, y) = (vals[*c], vals[*x], vals[*y]);
                    if lanes == 1 {
                        self.b.ins().select(c, x, y)
                    } else if dt == DType::F32 {
                        let m = self.b.ins().bitcast(F32X4, lane_flags(), c);
                        self.b.ins().bitselect(m, x, y)
                    } else {
                        self.b.ins().bitselect(c, x, y)
                    }
                }
                Inst::Cast(x) => {
                    let from = body.insts[*x].1;
                    self.cast(vals[*x], from, dt, lanes)
                }
            };
            vals.push(v);
        }
        vals.get(body.result)
            .copied()
            .ok_or_else(|| "body result out of range".to_string())
    }

    fn splat(&mut self, v: Value, vty: Type, lanes: u8) -> Value {
        if lanes == 1 {
            v
        } else {
            self.b.ins().splat(vty, v)
        }
    }

    fn constant(&mut self, c: f64, dt: DType, lanes: u8) -> Value {
        match dt {
            DType::F32 => self.math(lanes).fc(c as f32),
            DType::I32 => self.math(lanes).ic(c as i32),
            DType::Bool => {
                if lanes == 1 {
                    self.b.ins().iconst(I8, i64::from(c != 0.0))
                } else {
                    self.math(lanes).ic(if c != 0.0 { -1 } else { 0 })
                }
            }
        }
    }

    fn unary(&mut self, op: UnaryOp, x: Value, dt: DType, lanes: u8) -> Result<Value, String> {
        use UnaryOp::*;
        let undefined = || format!("{op:?} is not defined on {dt}");
        Ok(match dt {
            DType::F32 => match op {
                Neg => self.b.ins().fneg(x),
                Abs => self.b.ins().fabs(x),
                Floor => self.b.ins().floor(x),
                Sqrt => self.b.ins().sqrt(x),
                Recip | Rsqrt => {
                    let one = self.math(lanes).fc(1.0);
                    let d = if op == Rsqrt { self.b.ins().sqrt(x) } else { x };
                    self.b.ins().fdiv(one, d)
                }
                Exp => self.math(lanes).exp(x),
                Tanh => self.math(lanes).tanh(x),
                Erf => self.math(lanes).erf(x),
                Log => self.lanewise(self.ext.logf, &[x], lanes, F32X4),
                Sin => self.lanewise(self.ext.sinf, &[x], lanes, F32X4),
                Cos => self.lanewise(self.ext.cosf, &[x], lanes, F32X4),
                Not => return Err(undefined()),
            },
            DType::I32 => match op {
                Neg => self.b.ins().ineg(x),
                Abs => self.b.ins().iabs(x),
                _ => return Err(undefined()),
            },
            DType::Bool => match op {
                Not if lanes == 1 => self.b.ins().bxor_imm_s(x, 1),
                Not => self.b.ins().bnot(x),
                _ => return Err(undefined()),
            },
        })
    }

    fn binary(
        &mut self,
        op: BinaryOp,
        x: Value,
        y: Value,
        dt: DType,
        lanes: u8,
    ) -> Result<Value, String> {
        use BinaryOp::*;
        let undefined = || format!("{op:?} is not defined on {dt}");
        Ok(match dt {
            DType::F32 => match op {
                Add => self.b.ins().fadd(x, y),
                Sub => self.b.ins().fsub(x, y),
                Mul => self.b.ins().fmul(x, y),
                Div => self.b.ins().fdiv(x, y),
                Max => self.b.ins().fmax(x, y),
                Min => self.b.ins().fmin(x, y),
                Pow => self.lanewise(self.ext.powf, &[x, y], lanes, F32X4),
                Lt => self.b.ins().fcmp(FloatCC::LessThan, x, y),
                Le => self.b.ins().fcmp(FloatCC::LessThanOrEqual, x, y),
                Eq => self.b.ins().fcmp(FloatCC::Equal, x, y),
                And | Or => return Err(undefined()),
            },
            DType::I32 => match op {
                Add => self.b.ins().iadd(x, y),
                Sub => self.b.ins().isub(x, y),
                Mul => self.b.ins().imul(x, y),
                Div => self.lanewise_idiv(x, y, lanes),
                Max => self.b.ins().smax(x, y),
                Min => self.b.ins().smin(x, y),
                Pow => self.lanewise(self.ext.ipow, &[x, y], lanes, I32X4),
                Lt => self.b.ins().icmp(IntCC::SignedLessThan, x, y),
                Le => self.b.ins().icmp(IntCC::SignedLessThanOrEqual, x, y),
                Eq => self.b.ins().icmp(IntCC::Equal, x, y),
                And | Or => return Err(undefined()),
            },
            DType::Bool => match op {
                And => self.b.ins().band(x, y),
                Or => self.b.ins().bor(x, y),
                _ => return Err(undefined()),
            },
        })
    }

    fn cast(&mut self, x: Value, from: DType, to: DType, lanes: u8) -> Value {
        let v = lanes != 1;
        match (from, to) {
            (a, b) if a == b => x,
            (DType::F32, DType::I32) => self.b.ins().fcvt_to_sint_sat(int_ty(lanes), x),
            (DType::I32, DType::F32) => self.b.ins().fcvt_from_sint(float_ty(lanes), x),
            (DType::F32, DType::Bool) => {
                let z = self.math(lanes).fc(0.0);
                self.b.ins().fcmp(FloatCC::NotEqual, x, z)
            }
            (DType::I32, DType::Bool) => {
                if v {
                    let z = self.math(lanes).ic(0);
                    self.b.ins().icmp(IntCC::NotEqual, x, z)
                } else {
                    self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
                }
            }
            (DType::Bool, DType::F32) => {
                let one = self.math(lanes).fc(1.0);
                let zero = self.math(lanes).fc(0.0);
                self.math(lanes).fsel(x, one, zero)
            }
            (DType::Bool, DType::I32) => {
                if v {
                    let one = self.math(lanes).ic(1);
                    self.b.ins().band(x, one)
                } else {
                    self.b.ins().uextend(I32, x)
                }
            }
            _ => x,
        }
    }
}

fn vec_ty(dt: DType) -> Type {
    match dt {
        DType::F32 => F32X4,
        DType::I32 | DType::Bool => I32X4,
    }
}

fn int_ty(lanes: u8) -> Type {
    if lanes == 1 { I32 } else { I32X4 }
}

fn float_ty(lanes: u8) -> Type {
    if lanes == 1 { F32 } else { F32X4 }
}

/// Emits one row's work given the row's indices along the outer axes.
type RowBody<'r> = dyn FnMut(&mut Gen, &[Value]) -> Result<(), String> + 'r;

/// Loops over rows `[row_begin, row_end)`; `each_row` emits one row's work
/// given the row's indices along `outer`.
fn row_loop(g: &mut Gen, outer: &[Dim], each_row: &mut RowBody) -> Result<(), String> {
    let row = g.b.declare_var(I64);
    let r0 = g.params[2];
    g.b.def_var(row, r0);
    let head = g.b.create_block();
    let body = g.b.create_block();
    let exit = g.b.create_block();
    g.b.ins().jump(head, &[]);
    g.b.switch_to_block(head);
    let r = g.b.use_var(row);
    let more = g.b.ins().icmp(IntCC::SignedLessThan, r, g.params[3]);
    g.b.ins().brif(more, body, &[], exit, &[]);
    g.b.switch_to_block(body);
    let idx = g.unflatten(r, outer);
    each_row(g, &idx)?;
    let next = g.b.ins().iadd_imm_s(r, 1);
    g.b.def_var(row, next);
    g.b.ins().jump(head, &[]);
    g.b.switch_to_block(exit);
    g.b.ins().return_(&[]);
    Ok(())
}

/// A loop over columns `[begin, end)`: four at a time, then one at a time.
/// `each` emits the work at column `j` for the given lane count.
fn column_loop(
    g: &mut Gen,
    begin: Value,
    end: Value,
    each: &mut dyn FnMut(&mut Gen, Value, u8) -> Result<(), String>,
) -> Result<(), String> {
    let j = g.b.declare_var(I64);
    g.b.def_var(j, begin);
    let vhead = g.b.create_block();
    let vbody = g.b.create_block();
    let shead = g.b.create_block();
    let sbody = g.b.create_block();
    let done = g.b.create_block();
    g.b.ins().jump(vhead, &[]);

    g.b.switch_to_block(vhead);
    let jv = g.b.use_var(j);
    let j4 = g.b.ins().iadd_imm_s(jv, 4);
    let fits = g.b.ins().icmp(IntCC::SignedLessThanOrEqual, j4, end);
    g.b.ins().brif(fits, vbody, &[], shead, &[]);
    g.b.switch_to_block(vbody);
    let jv = g.b.use_var(j);
    each(g, jv, 4)?;
    let n = g.b.ins().iadd_imm_s(jv, 4);
    g.b.def_var(j, n);
    g.b.ins().jump(vhead, &[]);

    g.b.switch_to_block(shead);
    let js = g.b.use_var(j);
    let more = g.b.ins().icmp(IntCC::SignedLessThan, js, end);
    g.b.ins().brif(more, sbody, &[], done, &[]);
    g.b.switch_to_block(sbody);
    let js = g.b.use_var(j);
    each(g, js, 1)?;
    let n = g.b.ins().iadd_imm_s(js, 1);
    g.b.def_var(j, n);
    g.b.ins().jump(shead, &[]);

    g.b.switch_to_block(done);
    Ok(())
}

/// An element-wise kernel (also a Copy, and a Gemm epilogue whose product
/// is its last load): `out[p] = body(p)` over `domain`.
pub fn elementwise(
    g: &mut Gen,
    out: &View,
    out_dtype: DType,
    domain: &[Dim],
    loads: &[(View, DType)],
    body: &Body,
) -> Result<(), String> {
    let r = domain.len();
    let outer = &domain[..r - 1];
    row_loop(g, outer, &mut |g, idx| {
        let o = g.access(out, idx, out_dtype);
        let ls: Vec<Access> = loads.iter().map(|(v, dt)| g.access(v, idx, *dt)).collect();
        let (c0, c1) = (g.params[4], g.params[5]);
        column_loop(g, c0, c1, &mut |g, j, lanes| {
            let v = g.body(body, &ls, idx, r - 1, j, &[], lanes)?;
            g.store(&o, j, lanes, v);
            Ok(())
        })
    })
}

/// A row reduction: per row, each stage folds its body over the last axis;
/// then the epilogue runs per element of the row (or once, `per_row`).
#[allow(clippy::too_many_arguments)]
pub fn row_reduce(
    g: &mut Gen,
    out: &View,
    out_dtype: DType,
    domain: &[Dim],
    loads: &[(View, DType)],
    stages: &[Stage],
    epilogue: &Body,
    per_row: bool,
) -> Result<(), String> {
    let r = domain.len();
    let outer = &domain[..r - 1];
    let len_dim = domain[r - 1].clone();
    row_loop(g, outer, &mut |g, idx| {
        let o = g.access(out, idx, out_dtype);
        let ls: Vec<Access> = loads.iter().map(|(v, dt)| g.access(v, idx, *dt)).collect();
        let zero = g.iconst(0);
        let len = g.dim(&len_dim);
        let mut reduced: Vec<Value> = Vec::new();
        for st in stages {
            let dt = st.body.insts[st.body.result].1;
            let v = reduce_stage(g, st, dt, &ls, idx, r - 1, zero, len, &reduced)?;
            reduced.push(v);
        }
        if per_row {
            let v = g.body(epilogue, &ls, idx, r - 1, zero, &reduced, 1)?;
            g.store(&o, zero, 1, v);
            Ok(())
        } else {
            let red = reduced.clone();
            column_loop(g, zero, len, &mut |g, j, lanes| {
                let v = g.body(epilogue, &ls, idx, r - 1, j, &red, lanes)?;
                g.store(&o, j, lanes, v);
                Ok(())
            })
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn reduce_stage(
    g: &mut Gen,
    st: &Stage,
    dt: DType,
    ls: &[Access],
    idx: &[Value],
    last_axis: usize,
    begin: Value,
    end: Value,
    reduced: &[Value],
) -> Result<Value, String> {
    let scalar_ty = match dt {
        DType::F32 => F32,
        DType::I32 => I32,
        DType::Bool => I8,
    };
    let identity = |g: &mut Gen, lanes: u8| -> Result<Value, String> {
        Ok(match (st.op, dt) {
            (ReduceOp::Sum, DType::F32) => g.math(lanes).fc(0.0),
            (ReduceOp::Max, DType::F32) => g.math(lanes).fc(f32::NEG_INFINITY),
            (ReduceOp::Sum, DType::I32) => g.math(lanes).ic(0),
            (ReduceOp::Max, DType::I32) => g.math(lanes).ic(i32::MIN),
            (ReduceOp::Max, DType::Bool) => g.b.ins().iconst(I8, 0),
            (ReduceOp::Sum, DType::Bool) => return Err("sum is not defined on bool".into()),
        })
    };
    let combine = |g: &mut Gen, a: Value, b: Value| -> Value {
        match (st.op, dt) {
            (ReduceOp::Sum, DType::F32) => g.b.ins().fadd(a, b),
            (ReduceOp::Max, DType::F32) => g.b.ins().fmax(a, b),
            (ReduceOp::Sum, _) => g.b.ins().iadd(a, b),
            (ReduceOp::Max, DType::I32) => g.b.ins().smax(a, b),
            (ReduceOp::Max, DType::Bool) => g.b.ins().bor(a, b),
        }
    };
    let vectorise = dt != DType::Bool;
    let acc = g.b.declare_var(scalar_ty);
    let init = identity(g, 1)?;
    g.b.def_var(acc, init);
    let vacc = if vectorise {
        let v = g.b.declare_var(vec_ty(dt));
        let init = identity(g, 4)?;
        g.b.def_var(v, init);
        Some(v)
    } else {
        None
    };
    column_loop(g, begin, end, &mut |g, j, lanes| {
        if lanes == 4 && vacc.is_none() {
            // Bool stages run one lane at a time: do this block's four
            // columns as four scalar steps.
            for l in 0..4 {
                let jl = g.b.ins().iadd_imm_s(j, l);
                let x = g.body(&st.body, ls, idx, last_axis, jl, reduced, 1)?;
                let a = g.b.use_var(acc);
                let n = combine(g, a, x);
                g.b.def_var(acc, n);
            }
            return Ok(());
        }
        let x = g.body(&st.body, ls, idx, last_axis, j, reduced, lanes)?;
        if lanes == 4 {
            let v = vacc.expect("vector accumulator");
            let a = g.b.use_var(v);
            let n = combine(g, a, x);
            g.b.def_var(v, n);
        } else {
            let a = g.b.use_var(acc);
            let n = combine(g, a, x);
            g.b.def_var(acc, n);
        }
        Ok(())
    })?;
    // Fold the four vector lanes into the scalar tail's accumulator.
    let mut total = g.b.use_var(acc);
    if let Some(v) = vacc {
        let vv = g.b.use_var(v);
        let l: Vec<Value> = (0..4u8).map(|i| g.b.ins().extractlane(vv, i)).collect();
        let p = combine(g, l[0], l[1]);
        let q = combine(g, l[2], l[3]);
        let pq = combine(g, p, q);
        total = combine(g, pq, total);
    }
    Ok(total)
}
