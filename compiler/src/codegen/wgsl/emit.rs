//! One WGSL shader per kernel: bindings, size table, the kind's skeleton
//! and its bodies as `let`s.

use super::math::{Helper, prelude};
use super::{
    ATTENTION_THREADS, Binding, Dispatch, ELEMENT_THREADS, Elem, GEMM_TILE, Options, ROW_THREADS,
    Resource, SKINNY_ROWS, Skinny, WgslKernel, param_f16, resource_of, value_type,
};
use crate::ir::{BinaryOp, DType, Dim, ReduceOp, UnaryOp};
use crate::kernel::kinds;
use crate::kernel::{BufId, Epilogue, Inst, Kernel, KernelProgram, Size, View};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

type R<T> = Result<T, String>;

/// Depth of the Gemm operand tiles staged in workgroup memory.
const GEMM_DEPTH: u32 = 16;

/// Per-kernel state: bindings, the size table, helpers used.
struct Ctx<'p> {
    p: &'p KernelProgram,
    sizes: Vec<Size>,
    helpers: BTreeSet<Helper>,
    bindings: Vec<Binding>,
    /// Buffer → its binding.
    binding_of: BTreeMap<BufId, usize>,
    opts: Options,
    /// The shader reads the subgroup builtins.
    subgroups: bool,
}

fn product(dims: &[Dim]) -> Size {
    dims.iter()
        .fold(Size::one(), |acc, d| &acc * &Size::from_dim(d))
}

/// An index expression usable as a product operand.
fn paren(e: &str) -> String {
    if e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        e.to_string()
    } else {
        format!("({e})")
    }
}

fn i32_lit(v: i64) -> String {
    let v = v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    if v == i32::MIN {
        "bitcast<i32>(0x80000000u)".to_string()
    } else if v < 0 {
        format!("(-{}i)", -(v as i64))
    } else {
        format!("{v}i")
    }
}

fn f32_lit(v: f32) -> String {
    if v.is_finite() && (v == 0.0 || v.abs() >= f32::MIN_POSITIVE) && v.abs() < 1e38 {
        if v == 0.0 && v.is_sign_negative() {
            return "bitcast<f32>(0x80000000u)".to_string();
        }
        let s = format!("{:?}", v.abs());
        let s = if s.contains(['.', 'e']) {
            format!("{s}f")
        } else {
            format!("{s}.0f")
        };
        if v < 0.0 { format!("(-{s})") } else { s }
    } else {
        format!("bitcast<f32>(0x{:08x}u)", v.to_bits())
    }
}

fn konst(c: f64, dt: DType) -> String {
    match dt {
        DType::F32 => f32_lit(c as f32),
        DType::I32 => i32_lit(i64::from(c as i32)),
        DType::Bool => (c != 0.0).to_string(),
    }
}

fn zero(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "0.0f",
        DType::I32 => "0i",
        DType::Bool => "false",
    }
}

impl<'p> Ctx<'p> {
    fn new(p: &'p KernelProgram, k: &Kernel, opts: Options) -> Ctx<'p> {
        let out = k.output();
        // (resource, dtypes seen, written, stored as f16)
        let mut res: Vec<(Resource, Vec<DType>, bool, bool)> = Vec::new();
        let mut binding_of = BTreeMap::new();
        for (b, written) in
            std::iter::once((out, true)).chain(k.reads().into_iter().map(|b| (b, false)))
        {
            let r = resource_of(p, b);
            let i = match res.iter().position(|(x, ..)| *x == r) {
                Some(i) => i,
                None => {
                    res.push((r, Vec::new(), false, param_f16(p, b, opts)));
                    res.len() - 1
                }
            };
            let dt = p.buffers[b].dtype;
            if !res[i].1.contains(&dt) {
                res[i].1.push(dt);
            }
            res[i].2 |= written;
            binding_of.insert(b, i);
        }
        let bindings = res
            .into_iter()
            .map(|(resource, dts, writable, f16)| {
                let elem = match dts.as_slice() {
                    [DType::F32] if f16 => Elem::F16,
                    [DType::F32] => Elem::F32,
                    [DType::I32] => Elem::I32,
                    _ => Elem::U32,
                };
                Binding {
                    resource,
                    elem,
                    writable,
                }
            })
            .collect();
        Ctx {
            p,
            sizes: Vec::new(),
            helpers: BTreeSet::new(),
            bindings,
            binding_of,
            opts,
            subgroups: false,
        }
    }

    /// A size as an i32 expression: a literal, or an entry of the table.
    fn size(&mut self, s: &Size) -> String {
        if let Some(c) = s.as_const() {
            return i32_lit(c);
        }
        let i = match self.sizes.iter().position(|x| x == s) {
            Some(i) => i,
            None => {
                self.sizes.push(s.clone());
                self.sizes.len() - 1
            }
        };
        format!("sz[{}].{}", i / 4, ["x", "y", "z", "w"][i % 4])
    }

    fn dim(&mut self, d: &Dim) -> String {
        self.size(&Size::from_dim(d))
    }

    /// `offset + Σ idx[k]·strides[k]` for the given index expressions.
    fn addr(&mut self, v: &View, idx: &[String]) -> String {
        let mut terms = Vec::new();
        if !v.offset.is_zero() {
            terms.push(self.size(&v.offset));
        }
        for (s, i) in v.strides.iter().zip(idx) {
            if s.is_zero() {
                continue;
            }
            if s.as_const() == Some(1) {
                terms.push(paren(i));
            } else {
                let st = self.size(s);
                terms.push(format!("{} * {st}", paren(i)));
            }
        }
        if terms.is_empty() {
            "0i".to_string()
        } else {
            terms.join(" + ")
        }
    }

    /// The value of `buf[addr]` as a body value of the buffer's dtype.
    fn load_at(&self, buf: BufId, addr: &str) -> String {
        let b = self.binding_of[&buf];
        let e = format!("r{b}[{addr}]");
        match (self.p.buffers[buf].dtype, self.bindings[b].elem) {
            (DType::F32, Elem::F32) | (DType::I32, Elem::I32) => e,
            (DType::F32, Elem::F16) => format!("f32({e})"),
            (DType::F32, _) => format!("bitcast<f32>({e})"),
            (DType::I32, _) => format!("bitcast<i32>({e})"),
            (DType::Bool, _) => format!("({e} != 0u)"),
        }
    }

    /// The statement `buf[addr] = value`.
    fn store_at(&self, buf: BufId, addr: &str, value: &str) -> String {
        let b = self.binding_of[&buf];
        let v = match (self.p.buffers[buf].dtype, self.bindings[b].elem) {
            (DType::F32, Elem::F32) | (DType::I32, Elem::I32) => value.to_string(),
            (DType::F32, Elem::F16) => format!("f16({value})"),
            (DType::Bool, _) => format!("select(0u, 1u, {value})"),
            _ => format!("bitcast<u32>({value})"),
        };
        format!("r{b}[{addr}] = {v};")
    }

    fn load(&mut self, v: &View, idx: &[String]) -> String {
        let a = self.addr(v, idx);
        self.load_at(v.buf, &a)
    }

    fn store(&mut self, v: &View, idx: &[String], value: &str) -> String {
        let a = self.addr(v, idx);
        self.store_at(v.buf, &a, value)
    }

    fn helper(&mut self, h: Helper) -> Helper {
        self.helpers.insert(h);
        h
    }

    /// Emit `body` as `let`s into `out` (indented by `ind`); returns the
    /// name of its result. Values are named `{pfx}v{i}`.
    #[allow(clippy::too_many_arguments)]
    fn body(
        &mut self,
        out: &mut String,
        ind: &str,
        body: &crate::kernel::Body,
        loads: &[View],
        idx: &[String],
        reduced: &[String],
        pfx: &str,
    ) -> R<String> {
        let name = |i: usize| format!("{pfx}v{i}");
        let ty = |i: usize| body.insts[i].1;
        for (i, (inst, dt)) in body.insts.iter().enumerate() {
            let e = match inst {
                Inst::Load(l) => {
                    let v = loads
                        .get(*l)
                        .ok_or_else(|| format!("load l{l} out of range"))?;
                    if self.p.buffers[v.buf].dtype != *dt {
                        return Err(format!("load l{l}: buffer dtype differs from {dt}"));
                    }
                    self.load(v, idx)
                }
                Inst::Const(c) => konst(*c, *dt),
                Inst::Index(a) => idx
                    .get(*a)
                    .ok_or_else(|| format!("index {a} out of range"))?
                    .clone(),
                Inst::Size(s) => self.size(s),
                Inst::Unary(op, x) => self.unary(*op, ty(*x), &name(*x))?,
                Inst::Binary(op, x, y) => {
                    if ty(*x) != ty(*y) {
                        return Err(format!("{op:?} operands differ in dtype"));
                    }
                    self.binary(*op, ty(*x), &name(*x), &name(*y))?
                }
                Inst::Select(c, a, b) => {
                    format!("select({}, {}, {})", name(*b), name(*a), name(*c))
                }
                Inst::Cast(x) => self.cast(ty(*x), *dt, &name(*x)),
                Inst::Reduced(s) => reduced
                    .get(*s)
                    .ok_or_else(|| format!("reduced {s} out of range"))?
                    .clone(),
            };
            let _ = writeln!(out, "{ind}let {}: {} = {e};", name(i), value_type(*dt));
        }
        if body.result >= body.insts.len() {
            return Err("body result out of range".into());
        }
        Ok(name(body.result))
    }

    fn unary(&mut self, op: UnaryOp, dt: DType, x: &str) -> R<String> {
        use UnaryOp::*;
        Ok(match (dt, op) {
            (DType::F32, Neg) | (DType::I32, Neg) => format!("-{x}"),
            (DType::F32, Abs) | (DType::I32, Abs) => format!("abs({x})"),
            (DType::F32, Floor) => format!("floor({x})"),
            (DType::F32, Recip) => format!("1.0f / {x}"),
            (DType::F32, Sqrt) => format!("sqrt({x})"),
            (DType::F32, Rsqrt) => format!("inverseSqrt({x})"),
            (DType::F32, Exp) => format!("{}({x})", self.helper("k_exp")),
            (DType::F32, Log) => format!("{}({x})", self.helper("k_log")),
            (DType::F32, Tanh) => format!("{}({x})", self.helper("k_tanh")),
            (DType::F32, Erf) => format!("{}({x})", self.helper("k_erf")),
            (DType::F32, Sin) => format!("{}({x}, false)", self.helper("k_trig")),
            (DType::F32, Cos) => format!("{}({x}, true)", self.helper("k_trig")),
            (DType::Bool, Not) => format!("!{x}"),
            _ => return Err(format!("{op:?} is not defined on {dt}")),
        })
    }

    fn binary(&mut self, op: BinaryOp, dt: DType, x: &str, y: &str) -> R<String> {
        use BinaryOp::*;
        let infix = |o: &str| format!("{x} {o} {y}");
        Ok(match (dt, op) {
            (DType::F32 | DType::I32, Add) => infix("+"),
            (DType::F32 | DType::I32, Sub) => infix("-"),
            (DType::F32 | DType::I32, Mul) => infix("*"),
            (DType::F32 | DType::I32, Div) => infix("/"),
            (DType::F32 | DType::I32, Lt) => infix("<"),
            (DType::F32 | DType::I32, Le) => infix("<="),
            (DType::F32 | DType::I32, Eq) => infix("=="),
            (DType::F32, Max) => format!("{}({x}, {y})", self.helper("k_max")),
            (DType::F32, Min) => format!("{}({x}, {y})", self.helper("k_min")),
            (DType::F32, Pow) => format!("{}({x}, {y})", self.helper("k_pow")),
            (DType::I32, Max) => format!("max({x}, {y})"),
            (DType::I32, Min) => format!("min({x}, {y})"),
            (DType::I32, Pow) => {
                let p = self.helper("k_pow");
                let f = self.helper("k_f2i");
                format!("{f}({p}(f32({x}), f32({y})))")
            }
            (DType::Bool, And) => infix("&"),
            (DType::Bool, Or) => infix("|"),
            _ => return Err(format!("{op:?} is not defined on {dt}")),
        })
    }

    fn cast(&mut self, from: DType, to: DType, x: &str) -> String {
        match (from, to) {
            (DType::F32, DType::I32) => format!("{}({x})", self.helper("k_f2i")),
            (DType::F32, DType::Bool) => format!("{x} != 0.0f"),
            (DType::I32, DType::F32) => format!("f32({x})"),
            (DType::I32, DType::Bool) => format!("{x} != 0i"),
            (DType::Bool, DType::I32) => format!("select(0i, 1i, {x})"),
            (DType::Bool, DType::F32) => format!("select(0.0f, 1.0f, {x})"),
            _ => x.to_string(),
        }
    }

    /// Split the linear index `var` over `dims` (row-major) into `names`.
    fn decompose(
        &mut self,
        out: &mut String,
        ind: &str,
        var: &str,
        dims: &[Dim],
        names: &[String],
    ) {
        let r = dims.len();
        let mut cur = var.to_string();
        for k in (0..r).rev() {
            if k == 0 {
                let _ = writeln!(out, "{ind}let {} = {cur};", names[0]);
                break;
            }
            let d = self.dim(&dims[k]);
            let next = format!("{var}_{k}");
            let _ = writeln!(out, "{ind}let {} = {cur} % {d};", names[k]);
            let _ = writeln!(out, "{ind}let {next} = {cur} / {d};");
            cur = next;
        }
    }

    /// The complete shader around `main`'s body.
    fn finish(self, shared: &str, main: &str, threads: u32, dispatch: Dispatch) -> WgslKernel {
        // Directives come before every declaration.
        let mut s = if self.bindings.iter().any(|b| b.elem == Elem::F16) {
            "enable f16;\n".to_string()
        } else {
            String::new()
        };
        s.push_str(&prelude(&self.helpers));
        for (i, b) in self.bindings.iter().enumerate() {
            let access = if b.writable { "read_write" } else { "read" };
            let _ = writeln!(
                s,
                "@group(0) @binding({i}) var<storage, {access}> r{i}: array<{}>;",
                b.elem.wgsl()
            );
        }
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<uniform> sz: array<vec4<i32>, {}>;",
            self.bindings.len(),
            self.sizes.len().div_ceil(4).max(1)
        );
        s.push_str(shared);
        let _ = writeln!(s, "@compute @workgroup_size({threads})");
        s.push_str(
            "fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lidx: u32",
        );
        if self.subgroups {
            s.push_str(", @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32");
        }
        s.push_str(") {\n");
        s.push_str("  let g = i32(wid.x + wid.y * nwg.x);\n  let lid = i32(lidx);\n");
        s.push_str(main);
        s.push_str("}\n");
        WgslKernel {
            source: s,
            bindings: self.bindings,
            sizes: self.sizes,
            dispatch,
            skinny: None,
        }
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

pub fn kernel(p: &KernelProgram, k: &Kernel, opts: Options) -> R<WgslKernel> {
    let mut c = Ctx::new(p, k, opts);
    let whole = k;
    match k {
        Kernel::Elementwise(kinds::Elementwise {
            out,
            domain,
            loads,
            body,
        }) => {
            let mut m = String::new();
            let total = product(domain);
            let t = c.size(&total);
            let _ = writeln!(m, "  let e = g * {ELEMENT_THREADS}i + lid;");
            let _ = writeln!(m, "  if (e >= {t}) {{ return; }}");
            let idx = names("i", domain.len());
            c.decompose(&mut m, "  ", "e", domain, &idx);
            let v = c.body(&mut m, "  ", body, loads, &idx, &[], "")?;
            let st = c.store(out, &idx, &v);
            let _ = writeln!(m, "  {st}");
            Ok(c.finish("", &m, ELEMENT_THREADS, threads(total)))
        }
        Kernel::Copy(kinds::Copy { out, domain, src }) => {
            let mut m = String::new();
            let total = product(domain);
            let t = c.size(&total);
            let _ = writeln!(m, "  let e = g * {ELEMENT_THREADS}i + lid;");
            let _ = writeln!(m, "  if (e >= {t}) {{ return; }}");
            let idx = names("i", domain.len());
            c.decompose(&mut m, "  ", "e", domain, &idx);
            let v = c.load(src, &idx);
            let st = c.store(out, &idx, &v);
            let _ = writeln!(m, "  {st}");
            Ok(c.finish("", &m, ELEMENT_THREADS, threads(total)))
        }
        Kernel::Gather(kinds::Gather {
            out,
            table,
            indices,
            indices_shape,
            axis,
        }) => gather(c, *out, *table, indices, indices_shape, *axis),
        Kernel::RowReduce(kinds::RowReduce {
            out,
            domain,
            loads,
            stages,
            epilogue,
            per_row,
        }) => row_reduce(c, out, domain, loads, stages, epilogue, *per_row),
        Kernel::Gemm(kinds::Gemm {
            out,
            a,
            b,
            batch,
            m,
            n,
            k,
            epilogue,
            rows,
        }) => {
            let mut w = gemm(
                c,
                out,
                a,
                b,
                batch,
                [m, n, k],
                epilogue.as_ref(),
                rows.as_ref(),
            )?;
            // Few rows (decode): a tile of 64 rows would be mostly idle.
            if rows.is_none() {
                let c = Ctx::new(p, whole, opts);
                let kernel = gemm_skinny(c, out, a, b, batch, [m, n, k], epilogue.as_ref())?;
                w.skinny = Some(Skinny {
                    rows: Size::from_dim(m),
                    kernel: Box::new(kernel),
                });
            }
            Ok(w)
        }
        Kernel::Attention(kinds::Attention {
            out,
            q,
            kt,
            v,
            batch,
            m,
            keys,
            d,
            dv,
            score,
        }) => attention(c, [out, q, kt, v], batch, [m, keys, d, dv], score.as_ref()),
    }
}

/// A Gemm over at most [`SKINNY_ROWS`] rows, memory-bound: no operand
/// tiles. With `b` contiguous along `k` (a `[n, k]` weight) 64 invocations
/// share each output column (coalesced reads of its row of `b`, then a
/// tree sum), four columns per workgroup; otherwise each invocation owns a
/// column (reads across invocations are contiguous along `n`), 256 per
/// workgroup. The epilogue is applied per element, as in the tiled kernel.
fn gemm_skinny(
    mut c: Ctx,
    out: &View,
    a: &View,
    b: &View,
    batch: &[Dim],
    [m, n, k]: [&Dim; 3],
    epilogue: Option<&Epilogue>,
) -> R<WgslKernel> {
    const W: u32 = 256;
    const LANES: u32 = 64;
    let nb = batch.len();
    let bsize = product(batch);
    let rows = SKINNY_ROWS;
    let kb_unit = b.strides[nb].as_const() == Some(1);
    let cols = if kb_unit { W / LANES } else { W };
    let mut s = String::new();
    let (ms, ns, ks, nbs) = (c.dim(m), c.dim(n), c.dim(k), c.size(&bsize));
    let _ = writeln!(
        s,
        "  let M = min({ms}, {rows}i);\n  let N = {ns};\n  let K = {ks};"
    );
    let _ = writeln!(s, "  let groups_n = (N + {}i) / {cols}i;", cols - 1);
    let _ = writeln!(s, "  if (g >= groups_n * {nbs}) {{ return; }}");
    let _ = writeln!(s, "  let bflat = g / groups_n;\n  let cb = g % groups_n;");
    let bi = batch_indices(&mut c, &mut s, batch);
    let a_load = c.load(a, &with(&bi, &["gi", "gk"]));
    let b_load = c.load(b, &with(&bi, &["gk", "gj"]));
    let _ = writeln!(s, "  var acc: array<f32, {rows}>;");
    let mut shared = String::new();
    let reduce = |s: &mut String, ind: &str| {
        let _ = writeln!(s, "{ind}for (var gi = 0i; gi < M; gi = gi + 1i) {{");
        let _ = writeln!(s, "{ind}  acc[gi] = fma({a_load}, y, acc[gi]);");
        let _ = writeln!(s, "{ind}}}");
    };
    if kb_unit {
        let _ = writeln!(s, "  let lane = lid % {LANES}i;");
        let _ = writeln!(s, "  let gj = cb * {cols}i + lid / {LANES}i;");
        let _ = writeln!(s, "  if (gj < N) {{");
        let _ = writeln!(s, "    for (var gk = lane; gk < K; gk = gk + {LANES}i) {{");
        let _ = writeln!(s, "      let y = {b_load};");
        reduce(&mut s, "      ");
        let _ = writeln!(s, "    }}\n  }}");
        shared = format!("var<workgroup> red: array<f32, {}>;\n", W * rows as u32);
        let _ = writeln!(
            s,
            "  for (var r = 0i; r < {rows}i; r = r + 1i) {{ red[r * {W}i + lid] = acc[r]; }}"
        );
        let _ = writeln!(s, "  workgroupBarrier();");
        let _ = writeln!(s, "  for (var h = {}i; h > 0i; h = h / 2i) {{", LANES / 2);
        let _ = writeln!(s, "    if (lane < h) {{");
        let _ = writeln!(
            s,
            "      for (var r = 0i; r < {rows}i; r = r + 1i) {{ red[r * {W}i + lid] = red[r * {W}i + lid] + red[r * {W}i + lid + h]; }}"
        );
        let _ = writeln!(s, "    }}\n    workgroupBarrier();\n  }}");
        let _ = writeln!(s, "  if (lane != 0i || gj >= N) {{ return; }}");
        let _ = writeln!(s, "  for (var gi = 0i; gi < M; gi = gi + 1i) {{");
        let _ = writeln!(s, "    let prod = red[gi * {W}i + lid];");
    } else {
        let _ = writeln!(s, "  let gj = cb * {cols}i + lid;");
        let _ = writeln!(s, "  if (gj >= N) {{ return; }}");
        let _ = writeln!(s, "  for (var gk = 0i; gk < K; gk = gk + 1i) {{");
        let _ = writeln!(s, "    let y = {b_load};");
        reduce(&mut s, "    ");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "  for (var gi = 0i; gi < M; gi = gi + 1i) {{");
        let _ = writeln!(s, "    let prod = acc[gi];");
    }
    let oidx = with(&bi, &["gi", "gj"]);
    store_product(&mut c, &mut s, "    ", epilogue, out, &oidx)?;
    let _ = writeln!(s, "  }}");
    let dispatch = Dispatch::Tiles {
        batch: bsize,
        m: Size::one(),
        n: Size::from_dim(n),
        tile: cols,
    };
    Ok(c.finish(&shared, &s, W, dispatch))
}

/// `out[oidx] = epilogue(prod)` (or `prod`), indented by `ind`.
fn store_product(
    c: &mut Ctx,
    s: &mut String,
    ind: &str,
    epilogue: Option<&Epilogue>,
    out: &View,
    oidx: &[String],
) -> R<()> {
    let v = match epilogue {
        Some(e) => c.body(s, ind, &e.body, &e.loads, oidx, &["prod".to_string()], "")?,
        None => "prod".to_string(),
    };
    let st = c.store(out, oidx, &v);
    let _ = writeln!(s, "{ind}{st}");
    Ok(())
}

fn threads(count: Size) -> Dispatch {
    Dispatch::Threads {
        count,
        per_group: ELEMENT_THREADS,
    }
}

fn gather(
    mut c: Ctx,
    out: BufId,
    table: BufId,
    indices: &View,
    indices_shape: &[Dim],
    axis: usize,
) -> R<WgslKernel> {
    let tshape = &c.p.buffers[table].shape;
    if axis >= tshape.len() {
        return Err(format!("gather axis {axis} out of range"));
    }
    let pre = product(&tshape[..axis]);
    let rows = Size::from_dim(&tshape[axis]);
    let post = product(&tshape[axis + 1..]);
    let count = product(indices_shape);
    let total = &(&pre * &count) * &post;
    let dt = c.p.buffers[table].dtype;
    if c.p.buffers[out].dtype != dt {
        return Err("gather output dtype differs from the table's".into());
    }
    let mut m = String::new();
    let t = c.size(&total);
    let (ps, rs, cs) = (c.size(&post), c.size(&rows), c.size(&count));
    let _ = writeln!(m, "  let e = g * {ELEMENT_THREADS}i + lid;");
    let _ = writeln!(m, "  if (e >= {t}) {{ return; }}");
    let _ = writeln!(m, "  let q = e % {ps};");
    let _ = writeln!(m, "  let t = e / {ps};");
    let _ = writeln!(m, "  let ii = t % {cs};");
    let _ = writeln!(m, "  let pp = t / {cs};");
    let idx = names("i", indices_shape.len());
    c.decompose(&mut m, "  ", "ii", indices_shape, &idx);
    let ix = c.load(indices, &idx);
    let _ = writeln!(m, "  let ix: i32 = {ix};");
    let from = c.load_at(table, &format!("(pp * {rs} + ix) * {ps} + q"));
    let _ = writeln!(m, "  var x: {} = {};", value_type(dt), zero(dt));
    let _ = writeln!(m, "  if (ix >= 0i && ix < {rs}) {{ x = {from}; }}");
    let st = c.store_at(out, "e", "x");
    let _ = writeln!(m, "  {st}");
    Ok(c.finish("", &m, ELEMENT_THREADS, threads(total)))
}

/// Combine two partials of a reduction held as `dt` (bool as i32 0/1).
fn combine(c: &mut Ctx, op: ReduceOp, dt: DType, a: &str, b: &str) -> String {
    match (op, dt) {
        (ReduceOp::Sum, _) => format!("{a} + {b}"),
        (ReduceOp::Max, DType::F32) => format!("{}({a}, {b})", c.helper("k_max")),
        (ReduceOp::Max, _) => format!("max({a}, {b})"),
    }
}

#[allow(clippy::too_many_arguments)]
fn row_reduce(
    mut c: Ctx,
    out: &View,
    domain: &[Dim],
    loads: &[View],
    stages: &[crate::kernel::Stage],
    epilogue: &crate::kernel::Body,
    per_row: bool,
) -> R<WgslKernel> {
    let Some((last, lead)) = domain.split_last() else {
        return Err("row reduction over a scalar domain".into());
    };
    let rows = product(lead);
    let mut m = String::new();
    let rs = c.size(&rows);
    let len = c.dim(last);
    let _ = writeln!(m, "  if (g >= {rs}) {{ return; }}");
    let mut idx = names("i", lead.len());
    c.decompose(&mut m, "  ", "g", lead, &idx);
    idx.push("j".to_string());
    let _ = writeln!(m, "  let len = {len};");
    let (mut uses_f, mut uses_i) = (false, false);
    let mut reduced = Vec::new();
    for (s, st) in stages.iter().enumerate() {
        let Some(&(_, dt)) = st.body.insts.get(st.body.result) else {
            return Err(format!("stage {s}: empty body"));
        };
        if st.op == ReduceOp::Sum && dt == DType::Bool {
            return Err("sum is not defined on bool".into());
        }
        // Partials: f32 in `red_f`, i32 and bool (0/1) in `red_i`.
        let (acc_ty, arr, ident) = match (st.op, dt) {
            (_, DType::F32) => {
                uses_f = true;
                let id = if st.op == ReduceOp::Sum {
                    "0.0f".to_string()
                } else {
                    c.helper("k_inf");
                    "-k_inf()".to_string()
                };
                ("f32", "red_f", id)
            }
            (ReduceOp::Sum, _) => {
                uses_i = true;
                ("i32", "red_i", "0i".to_string())
            }
            (ReduceOp::Max, DType::I32) => {
                uses_i = true;
                ("i32", "red_i", i32_lit(i64::from(i32::MIN)))
            }
            (ReduceOp::Max, DType::Bool) => {
                uses_i = true;
                ("i32", "red_i", "0i".to_string())
            }
        };
        let acc = format!("acc{s}");
        let _ = writeln!(m, "  var {acc}: {acc_ty} = {ident};");
        let _ = writeln!(m, "  for (var j = lid; j < len; j = j + {ROW_THREADS}i) {{");
        let v = c.body(&mut m, "    ", &st.body, loads, &idx, &reduced, "")?;
        let v = if dt == DType::Bool {
            format!("select(0i, 1i, {v})")
        } else {
            v
        };
        let comb = combine(&mut c, st.op, dt, &acc, &v);
        let _ = writeln!(m, "    {acc} = {comb};");
        let _ = writeln!(m, "  }}");
        let red = format!("red{s}");
        let total = if c.opts.subgroups && st.op == ReduceOp::Sum {
            // One partial per subgroup, then every invocation adds them up
            // in subgroup order (deterministic for a given subgroup size).
            c.subgroups = true;
            let _ = writeln!(m, "  {acc} = subgroupAdd({acc});");
            let _ = writeln!(m, "  if (sg_lane == 0u) {{ {arr}[sg_id] = {acc}; }}");
            let _ = writeln!(m, "  workgroupBarrier();");
            let _ = writeln!(m, "  var tot{s}: {acc_ty} = {ident};");
            let _ = writeln!(
                m,
                "  for (var q = 0i; q < i32(n_sg); q = q + 1i) {{ tot{s} = tot{s} + {arr}[q]; }}"
            );
            format!("tot{s}")
        } else {
            let _ = writeln!(m, "  {arr}[lid] = {acc};");
            let _ = writeln!(m, "  workgroupBarrier();");
            let _ = writeln!(
                m,
                "  for (var w = {}i; w > 0i; w = w / 2i) {{",
                ROW_THREADS / 2
            );
            let comb = combine(
                &mut c,
                st.op,
                dt,
                &format!("{arr}[lid]"),
                &format!("{arr}[lid + w]"),
            );
            let _ = writeln!(m, "    if (lid < w) {{ {arr}[lid] = {comb}; }}");
            let _ = writeln!(m, "    workgroupBarrier();");
            let _ = writeln!(m, "  }}");
            format!("{arr}[0]")
        };
        let rv = if dt == DType::Bool {
            format!("{total} != 0i")
        } else {
            total
        };
        let _ = writeln!(m, "  let {red}: {} = {rv};", value_type(dt));
        let _ = writeln!(m, "  workgroupBarrier();");
        reduced.push(red);
    }
    if per_row {
        let _ = writeln!(m, "  if (lid == 0i) {{");
        let _ = writeln!(m, "    let j = 0i;");
    } else {
        let _ = writeln!(m, "  for (var j = lid; j < len; j = j + {ROW_THREADS}i) {{");
    }
    let v = c.body(&mut m, "    ", epilogue, loads, &idx, &reduced, "")?;
    let st = c.store(out, &idx, &v);
    let _ = writeln!(m, "    {st}");
    let _ = writeln!(m, "  }}");
    let mut shared = String::new();
    if uses_f {
        let _ = writeln!(shared, "var<workgroup> red_f: array<f32, {ROW_THREADS}>;");
    }
    if uses_i {
        let _ = writeln!(shared, "var<workgroup> red_i: array<i32, {ROW_THREADS}>;");
    }
    Ok(c.finish(&shared, &m, ROW_THREADS, Dispatch::Groups(rows)))
}

/// Base names of the batch indices and the statements computing them from
/// the linear batch index `bflat`.
fn batch_indices(c: &mut Ctx, m: &mut String, batch: &[Dim]) -> Vec<String> {
    let bi = names("b", batch.len());
    if !batch.is_empty() {
        c.decompose(m, "  ", "bflat", batch, &bi);
    }
    bi
}

fn with(bi: &[String], rest: &[&str]) -> Vec<String> {
    bi.iter()
        .cloned()
        .chain(rest.iter().map(|s| s.to_string()))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn gemm(
    mut c: Ctx,
    out: &View,
    a: &View,
    b: &View,
    batch: &[Dim],
    [m, n, k]: [&Dim; 3],
    epilogue: Option<&Epilogue>,
    rows: Option<&View>,
) -> R<WgslKernel> {
    let nb = batch.len();
    if a.strides.len() != nb + 2 || b.strides.len() != nb + 2 || out.strides.len() != nb + 2 {
        return Err("gemm views must be over (batch.., rows, cols)".into());
    }
    if c.p.buffers[a.buf].dtype != DType::F32 || c.p.buffers[b.buf].dtype != DType::F32 {
        return Err("gemm operands must be f32".into());
    }
    const T: u32 = GEMM_TILE;
    const D: u32 = GEMM_DEPTH;
    // 256 invocations, each a 4×4 block of the 64×64 tile.
    const PER: u32 = 4;
    const INV: u32 = (T / PER) * (T / PER);
    let bsize = product(batch);
    let mut s = String::new();
    let (ms, ns, ks, nbs) = (c.dim(m), c.dim(n), c.dim(k), c.size(&bsize));
    let _ = writeln!(s, "  let M = {ms};\n  let N = {ns};\n  let K = {ks};");
    let _ = writeln!(s, "  let tiles_m = (M + {}i) / {T}i;", T - 1);
    let _ = writeln!(s, "  let tiles_n = (N + {}i) / {T}i;", T - 1);
    let _ = writeln!(s, "  let per_b = tiles_m * tiles_n;");
    let _ = writeln!(s, "  if (g >= per_b * {nbs}) {{ return; }}");
    let _ = writeln!(s, "  let bflat = g / per_b;\n  let tt = g % per_b;");
    let _ = writeln!(
        s,
        "  let row0 = (tt / tiles_n) * {T}i;\n  let col0 = (tt % tiles_n) * {T}i;"
    );
    let bi = batch_indices(&mut c, &mut s, batch);
    let _ = writeln!(
        s,
        "  let tx = lid % {}i;\n  let ty = lid / {}i;",
        T / PER,
        T / PER
    );
    let _ = writeln!(s, "  var acc: array<f32, {}>;", PER * PER);
    let mut shared = format!(
        "var<workgroup> ta: array<f32, {}>;\nvar<workgroup> tb: array<f32, {}>;\n",
        T * D,
        T * D
    );
    // Tile store of zeros for skipped rows (the same loop as the epilogue).
    let zero_store = |c: &mut Ctx| c.store(out, &with(&bi, &["gi", "gj"]), "0.0f");
    if let Some(rv) = rows {
        if rv.strides.len() != nb + 1 || c.p.buffers[rv.buf].dtype != DType::F32 {
            return Err("gemm row dispatch must be an f32 view over (batch.., m)".into());
        }
        shared += &format!(
            "var<workgroup> row_on: array<u32, {T}>;\nvar<workgroup> any_on: atomic<u32>;\nvar<workgroup> any_flag: u32;\n"
        );
        let on = c.load(rv, &with(&bi, &["gi"]));
        let _ = writeln!(s, "  if (lid < {T}i) {{");
        let _ = writeln!(s, "    let gi = row0 + lid;");
        let _ = writeln!(s, "    var on = 0u;");
        let _ = writeln!(
            s,
            "    if (gi < M && {on} != 0.0f) {{ on = 1u; atomicStore(&any_on, 1u); }}"
        );
        let _ = writeln!(s, "    row_on[lid] = on;");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "  workgroupBarrier();");
        let _ = writeln!(s, "  if (lid == 0i) {{ any_flag = atomicLoad(&any_on); }}");
        let _ = writeln!(s, "  if (workgroupUniformLoad(&any_flag) == 0u) {{");
        let _ = writeln!(s, "    for (var r = 0i; r < {PER}i; r = r + 1i) {{");
        let _ = writeln!(s, "      for (var q = 0i; q < {PER}i; q = q + 1i) {{");
        let _ = writeln!(
            s,
            "        let gi = row0 + ty * {PER}i + r;\n        let gj = col0 + tx * {PER}i + q;"
        );
        let z = zero_store(&mut c);
        let _ = writeln!(s, "        if (gi < M && gj < N) {{ {z} }}");
        let _ = writeln!(s, "      }}\n    }}\n    return;\n  }}");
    }
    // Operand tiles: `ta[kk·T + mm]`, `tb[kk·T + nn]`; consecutive
    // invocations walk the operand's contiguous axis when it has one.
    let ka_unit = a.strides[nb + 1].as_const() == Some(1);
    let kb_unit = b.strides[nb].as_const() == Some(1);
    let ta_load = c.load(a, &with(&bi, &["gi", "gk"]));
    let tb_load = c.load(b, &with(&bi, &["gk", "gj"]));
    let _ = writeln!(s, "  for (var k0 = 0i; k0 < K; k0 = k0 + {D}i) {{");
    let _ = writeln!(
        s,
        "    for (var t = 0i; t < {}i; t = t + 1i) {{",
        T * D / INV
    );
    let _ = writeln!(s, "      let f = lid + t * {INV}i;");
    if ka_unit {
        let _ = writeln!(s, "      let kk = f % {D}i;\n      let mm = f / {D}i;");
    } else {
        let _ = writeln!(s, "      let mm = f % {T}i;\n      let kk = f / {T}i;");
    }
    let _ = writeln!(s, "      let gi = row0 + mm;\n      let gk = k0 + kk;");
    let _ = writeln!(s, "      var x = 0.0f;");
    let _ = writeln!(s, "      if (gi < M && gk < K) {{ x = {ta_load}; }}");
    let _ = writeln!(s, "      ta[kk * {T}i + mm] = x;");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(
        s,
        "    for (var t = 0i; t < {}i; t = t + 1i) {{",
        T * D / INV
    );
    let _ = writeln!(s, "      let f = lid + t * {INV}i;");
    if kb_unit {
        let _ = writeln!(s, "      let kk = f % {D}i;\n      let nn = f / {D}i;");
    } else {
        let _ = writeln!(s, "      let nn = f % {T}i;\n      let kk = f / {T}i;");
    }
    let _ = writeln!(s, "      let gj = col0 + nn;\n      let gk = k0 + kk;");
    let _ = writeln!(s, "      var y = 0.0f;");
    let _ = writeln!(s, "      if (gj < N && gk < K) {{ y = {tb_load}; }}");
    let _ = writeln!(s, "      tb[kk * {T}i + nn] = y;");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    workgroupBarrier();");
    let _ = writeln!(s, "    for (var kk = 0i; kk < {D}i; kk = kk + 1i) {{");
    let _ = writeln!(
        s,
        "      let av = vec4<f32>(ta[kk * {T}i + ty * 4i], ta[kk * {T}i + ty * 4i + 1i], ta[kk * {T}i + ty * 4i + 2i], ta[kk * {T}i + ty * 4i + 3i]);"
    );
    let _ = writeln!(
        s,
        "      let bv = vec4<f32>(tb[kk * {T}i + tx * 4i], tb[kk * {T}i + tx * 4i + 1i], tb[kk * {T}i + tx * 4i + 2i], tb[kk * {T}i + tx * 4i + 3i]);"
    );
    for r in 0..PER {
        for q in 0..PER {
            let (ar, bq) = (
                ["x", "y", "z", "w"][r as usize],
                ["x", "y", "z", "w"][q as usize],
            );
            let i = r * PER + q;
            let _ = writeln!(s, "      acc[{i}] = fma(av.{ar}, bv.{bq}, acc[{i}]);");
        }
    }
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    workgroupBarrier();");
    let _ = writeln!(s, "  }}");
    // Epilogue and store.
    let _ = writeln!(s, "  for (var r = 0i; r < {PER}i; r = r + 1i) {{");
    let _ = writeln!(s, "    for (var q = 0i; q < {PER}i; q = q + 1i) {{");
    let _ = writeln!(
        s,
        "      let gi = row0 + ty * {PER}i + r;\n      let gj = col0 + tx * {PER}i + q;"
    );
    let _ = writeln!(s, "      if (gi < M && gj < N) {{");
    let oidx = with(&bi, &["gi", "gj"]);
    if rows.is_some() {
        let z = zero_store(&mut c);
        let _ = writeln!(
            s,
            "        if (row_on[ty * {PER}i + r] == 0u) {{ {z} continue; }}"
        );
    }
    let _ = writeln!(s, "        let prod = acc[r * {PER}i + q];");
    store_product(&mut c, &mut s, "        ", epilogue, out, &oidx)?;
    let _ = writeln!(s, "      }}\n    }}\n  }}");
    let dispatch = Dispatch::Tiles {
        batch: bsize,
        m: Size::from_dim(m),
        n: Size::from_dim(n),
        tile: T,
    };
    Ok(c.finish(&shared, &s, INV, dispatch))
}

fn attention(
    mut c: Ctx,
    [out, q, kt, v]: [&View; 4],
    batch: &[Dim],
    [m, keys, d, dv]: [&Dim; 4],
    score: Option<&Epilogue>,
) -> R<WgslKernel> {
    let nb = batch.len();
    for x in [out, q, kt, v] {
        if x.strides.len() != nb + 2 {
            return Err("attention views must be over (batch.., rows, cols)".into());
        }
        if c.p.buffers[x.buf].dtype != DType::F32 {
            return Err("attention operands must be f32".into());
        }
    }
    let (Some(dc), Some(dvc)) = (d.as_const(), dv.as_const()) else {
        return Err(format!(
            "attention head sizes must be constants (d = {d}, dv = {dv})"
        ));
    };
    const W: u32 = ATTENTION_THREADS;
    let per = (dvc as u32).div_ceil(W).max(1);
    c.helper("k_inf");
    c.helper("k_exp");
    c.helper("k_max");
    let bsize = product(batch);
    let units = &bsize * &Size::from_dim(m);
    let mut s = String::new();
    let (ms, ks, us) = (c.dim(m), c.dim(keys), c.size(&units));
    let _ = writeln!(s, "  let M = {ms};\n  let KEYS = {ks};");
    let _ = writeln!(s, "  if (g >= {us}) {{ return; }}");
    let _ = writeln!(s, "  let qi = g % M;\n  let bflat = g / M;");
    let bi = batch_indices(&mut c, &mut s, batch);
    let qload = c.load(q, &with(&bi, &["qi", "c"]));
    let _ = writeln!(
        s,
        "  for (var c = lid; c < {dc}i; c = c + {W}i) {{ qs[c] = {qload}; }}"
    );
    let _ = writeln!(s, "  workgroupBarrier();");
    let _ = writeln!(s, "  var m_run = -k_inf();\n  var l_run = 0.0f;");
    let _ = writeln!(s, "  var acc: array<f32, {per}>;");
    let _ = writeln!(s, "  for (var j0 = 0i; j0 < KEYS; j0 = j0 + {W}i) {{");
    let _ = writeln!(s, "    let kj = j0 + lid;\n    var sc = -k_inf();");
    let _ = writeln!(s, "    if (kj < KEYS) {{");
    let kload = c.load(kt, &with(&bi, &["p", "kj"]));
    let _ = writeln!(s, "      var dot = 0.0f;");
    let _ = writeln!(
        s,
        "      for (var p = 0i; p < {dc}i; p = p + 1i) {{ dot = fma(qs[p], {kload}, dot); }}"
    );
    let sv = match score {
        Some(e) => {
            if e.body.insts.get(e.body.result).map(|x| x.1) != Some(DType::F32) {
                return Err("attention score body must produce f32".into());
            }
            c.body(
                &mut s,
                "      ",
                &e.body,
                &e.loads,
                &with(&bi, &["qi", "kj"]),
                &["dot".to_string()],
                "",
            )?
        }
        None => "dot".to_string(),
    };
    let _ = writeln!(s, "      sc = {sv};\n    }}");
    let tree = |s: &mut String, comb: &str| {
        let _ = writeln!(s, "    workgroupBarrier();");
        let _ = writeln!(s, "    for (var w = {}i; w > 0i; w = w / 2i) {{", W / 2);
        let _ = writeln!(s, "      if (lid < w) {{ red[lid] = {comb}; }}");
        let _ = writeln!(s, "      workgroupBarrier();\n    }}");
    };
    let _ = writeln!(s, "    red[lid] = sc;");
    tree(&mut s, "k_max(red[lid], red[lid + w])");
    let _ = writeln!(s, "    let m_new = k_max(m_run, red[0]);");
    let _ = writeln!(s, "    workgroupBarrier();");
    let _ = writeln!(
        s,
        "    let alpha = select(k_exp(m_run - m_new), 1.0f, m_new == -k_inf());"
    );
    let _ = writeln!(s, "    var pj = 0.0f;");
    let _ = writeln!(
        s,
        "    if (kj < KEYS && m_new != -k_inf()) {{ pj = k_exp(sc - m_new); }}"
    );
    let _ = writeln!(s, "    ps[lid] = pj;\n    red[lid] = pj;");
    tree(&mut s, "red[lid] + red[lid + w]");
    let _ = writeln!(s, "    l_run = l_run * alpha + red[0];");
    let _ = writeln!(s, "    let nk = min({W}i, KEYS - j0);");
    let vload = c.load(v, &with(&bi, &["j0 + jj", "c"]));
    let _ = writeln!(s, "    for (var t = 0i; t < {per}i; t = t + 1i) {{");
    let _ = writeln!(s, "      let c = lid + t * {W}i;");
    let _ = writeln!(s, "      if (c < {dvc}i) {{");
    let _ = writeln!(s, "        var a = acc[t] * alpha;");
    let _ = writeln!(
        s,
        "        for (var jj = 0i; jj < nk; jj = jj + 1i) {{ a = fma(ps[jj], {vload}, a); }}"
    );
    let _ = writeln!(s, "        acc[t] = a;\n      }}\n    }}");
    let _ = writeln!(s, "    m_run = m_new;\n    workgroupBarrier();\n  }}");
    let _ = writeln!(s, "  for (var t = 0i; t < {per}i; t = t + 1i) {{");
    let _ = writeln!(s, "    let c = lid + t * {W}i;");
    let _ = writeln!(s, "    if (c < {dvc}i) {{");
    let st = c.store(
        out,
        &with(&bi, &["qi", "c"]),
        "select(acc[t] / l_run, 0.0f, KEYS == 0i)",
    );
    let _ = writeln!(s, "      {st}\n    }}\n  }}");
    let shared = format!(
        "var<workgroup> qs: array<f32, {}>;\nvar<workgroup> ps: array<f32, {W}>;\nvar<workgroup> red: array<f32, {W}>;\n",
        dc.max(1)
    );
    Ok(c.finish(&shared, &s, W, Dispatch::Groups(units)))
}
