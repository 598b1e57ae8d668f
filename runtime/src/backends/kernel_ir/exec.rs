//! A plain-loop interpreter of the kernel IR ([`KernelProgram`]): it checks
//! fusion against the graph interpreter before any code generator exists.
//!
//! Same conventions as [`crate::run`]: every declared input by name, shape
//! symbols bound from the inputs' shapes, weights by canonical name, outputs
//! in the graph's order. Same numeric contract: f64 accumulation for Gemm and
//! Sum stages (rounded once), transcendental ops in f64 rounded once.

use crate::error::{Result, RuntimeError};
use crate::exec::interpreter::{Bindings, NamedTensor};
use crate::exec::program::{bind, const_data, param_or_join};
use crate::tensor::{Tensor, TensorData};
use crate::weights::Weights;
use kiln_compiler::ir::scalar;
use kiln_compiler::ir::{BinaryOp, DType, UnaryOp};
use kiln_compiler::kernel::{Body, BufferKind, Inst, Kernel, KernelProgram, Size, View};

/// The named results of a kernel-program run, in the graph's output order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelOutputs {
    entries: Vec<(String, Tensor)>,
    bindings: Bindings,
}

impl KernelOutputs {
    /// The output named `name`, if the graph has one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    /// `(name, tensor)` pairs in the graph's output order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }
    /// The concrete values the symbolic dimensions took in this run.
    pub fn bindings(&self) -> &Bindings {
        &self.bindings
    }
    /// The `(name, tensor)` pairs, in output order.
    pub fn into_vec(self) -> Vec<(String, Tensor)> {
        self.entries
    }
}

impl std::ops::Index<&str> for KernelOutputs {
    type Output = Tensor;
    fn index(&self, name: &str) -> &Tensor {
        self.get(name)
            .unwrap_or_else(|| panic!("no output named `{name}`"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum V {
    F(f32),
    I(i32),
    B(bool),
}

impl V {
    fn f(self) -> f32 {
        match self {
            V::F(x) => x,
            V::I(x) => x as f32,
            V::B(x) => f32::from(u8::from(x)),
        }
    }
}

fn err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Internal { message: m.into() }
}

mod per_kind;

struct Exec<'a> {
    env: &'a Bindings,
    data: Vec<TensorData>,
    shapes: Vec<Vec<usize>>,
}

/// Run `program` on `inputs` with `weights`.
pub fn run_program<N: NamedTensor>(
    program: &KernelProgram,
    weights: &Weights,
    inputs: impl IntoIterator<Item = N>,
) -> Result<KernelOutputs> {
    let inputs: Vec<N> = inputs.into_iter().collect();
    let pairs: Vec<(&str, &Tensor)> = inputs.iter().map(|i| (i.name(), i.tensor())).collect();
    let env = bind(program, &pairs)?;
    let mut ex = Exec {
        env: &env,
        data: Vec::with_capacity(program.buffers.len()),
        shapes: Vec::new(),
    };
    for buf in &program.buffers {
        let n = ex.size(&buf.numel())? as usize;
        let d = match &buf.kind {
            BufferKind::Input(name) => {
                let (_, t) = pairs.iter().find(|(x, _)| x == name).expect("bound");
                t.data().clone()
            }
            BufferKind::Param(name) => {
                param_or_join(program, weights, name, buf.dtype, &buf.shape)?
                    .data()
                    .clone()
            }
            BufferKind::Const(v) => const_data(v, buf.dtype),
            BufferKind::Output | BufferKind::Temp => TensorData::zeros(buf.dtype, n),
        };
        ex.data.push(d);
        let shape = ex.dims(&buf.shape)?;
        ex.shapes.push(shape);
    }
    for (i, k) in program.kernels.iter().enumerate() {
        ex.kernel_inner(k).map_err(|e| match e {
            KErr::R(e) => e,
            KErr::S(message) => RuntimeError::Kernel {
                program: program.name.clone(),
                kernel: i,
                kind: k.kind(),
                message,
            },
        })?;
    }
    let mut entries = Vec::new();
    for (name, id) in &program.outputs {
        let buf = &program.buffers[*id];
        let shape = buf
            .shape
            .iter()
            .map(|d| {
                d.eval(&|s| env.get(s).copied())
                    .ok_or_else(|| err("unbound dim"))
            })
            .collect::<Result<Vec<usize>>>()?;
        entries.push((name.clone(), Tensor::new(shape, ex.data[*id].clone())?));
    }
    Ok(KernelOutputs {
        entries,
        bindings: env.clone(),
    })
}

/// A view evaluated at the run's lengths.
struct VE {
    buf: usize,
    off: i64,
    strides: Vec<i64>,
}

impl VE {
    fn at(&self, idx: &[usize]) -> usize {
        let mut a = self.off;
        for (s, &i) in self.strides.iter().zip(idx) {
            a += s * i as i64;
        }
        a as usize
    }
}

/// Every point of `dims` in row-major order.
fn for_each(
    dims: &[usize],
    f: &mut dyn FnMut(&[usize]) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    if dims.contains(&0) {
        return Ok(());
    }
    let mut idx = vec![0usize; dims.len()];
    loop {
        f(&idx)?;
        let mut a = dims.len();
        loop {
            if a == 0 {
                return Ok(());
            }
            a -= 1;
            idx[a] += 1;
            if idx[a] < dims[a] {
                break;
            }
            idx[a] = 0;
        }
    }
}

impl Exec<'_> {
    fn size(&self, s: &Size) -> Result<i64> {
        s.eval(&|x| self.env.get(x).copied())
            .ok_or_else(|| err(format!("unbound size {s}")))
    }

    fn dims(&self, shape: &[kiln_compiler::ir::Dim]) -> Result<Vec<usize>> {
        shape
            .iter()
            .map(|d| {
                d.eval(&|s| self.env.get(s).copied())
                    .ok_or_else(|| err(format!("unbound dim {d}")))
            })
            .collect()
    }

    fn view(&self, v: &View) -> Result<VE> {
        Ok(VE {
            buf: v.buf,
            off: self.size(&v.offset)?,
            strides: v
                .strides
                .iter()
                .map(|s| self.size(s))
                .collect::<Result<_>>()?,
        })
    }

    fn read(&self, v: &VE, idx: &[usize]) -> std::result::Result<V, String> {
        let a = v.at(idx);
        let oob = || format!("read of b{} at {a} out of bounds", v.buf);
        Ok(match &self.data[v.buf] {
            TensorData::F32(x) => V::F(*x.get(a).ok_or_else(oob)?),
            TensorData::I32(x) => V::I(*x.get(a).ok_or_else(oob)?),
            TensorData::Bool(x) => V::B(*x.get(a).ok_or_else(oob)?),
        })
    }

    fn write(&mut self, v: &VE, idx: &[usize], x: V) -> std::result::Result<(), String> {
        let a = v.at(idx);
        let oob = format!("write of b{} at {a} out of bounds", v.buf);
        match (&mut self.data[v.buf], x) {
            (TensorData::F32(d), V::F(x)) => *d.get_mut(a).ok_or(oob)? = x,
            (TensorData::I32(d), V::I(x)) => *d.get_mut(a).ok_or(oob)? = x,
            (TensorData::Bool(d), V::B(x)) => *d.get_mut(a).ok_or(oob)? = x,
            _ => return Err(format!("dtype mismatch writing b{}", v.buf)),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn eval(
        &self,
        body: &Body,
        loads: &[VE],
        idx: &[usize],
        reduced: &[V],
        sizes: &[Option<i64>],
        vals: &mut Vec<V>,
    ) -> std::result::Result<V, String> {
        vals.clear();
        for (i, (inst, dt)) in body.insts.iter().enumerate() {
            let v = match inst {
                Inst::Load(l) => self.read(&loads[*l], idx)?,
                Inst::Const(c) => konst(*c, *dt),
                Inst::Index(a) => V::I(idx[*a] as i32),
                Inst::Size(_) => V::I(sizes[i].expect("pre-evaluated") as i32),
                Inst::Unary(u, x) => unary(*u, vals[*x])?,
                Inst::Binary(b, x, y) => binary(*b, vals[*x], vals[*y])?,
                Inst::Select(c, x, y) => match vals[*c] {
                    V::B(true) => vals[*x],
                    V::B(false) => vals[*y],
                    _ => return Err("select condition is not bool".into()),
                },
                Inst::Cast(x) => cast(vals[*x], *dt),
                Inst::Reduced(s) => *reduced.get(*s).ok_or("reduced stage out of range")?,
            };
            vals.push(v);
        }
        Ok(vals[body.result])
    }

    fn sizes(&self, body: &Body) -> Result<Vec<Option<i64>>> {
        body.insts
            .iter()
            .map(|(i, _)| match i {
                Inst::Size(s) => self.size(s).map(Some),
                _ => Ok(None),
            })
            .collect()
    }

    fn kernel_inner(&mut self, k: &Kernel) -> std::result::Result<(), KErr> {
        match k {
            Kernel::Elementwise(x) => self.elementwise(x),
            Kernel::Copy(x) => self.copy(x),
            Kernel::RowReduce(x) => self.row_reduce(x),
            Kernel::Gemm(x) => self.gemm(x),
            Kernel::Gather(x) => self.gather_kernel(x),
            Kernel::Attention(x) => self.attention(x),
        }
    }
}

enum KErr {
    R(RuntimeError),
    S(String),
}

impl From<RuntimeError> for KErr {
    fn from(e: RuntimeError) -> KErr {
        KErr::R(e)
    }
}

impl From<String> for KErr {
    fn from(e: String) -> KErr {
        KErr::S(e)
    }
}

impl From<&str> for KErr {
    fn from(e: &str) -> KErr {
        KErr::S(e.to_string())
    }
}

fn konst(c: f64, dt: DType) -> V {
    match dt {
        DType::F32 => V::F(c as f32),
        DType::I32 => V::I(c as i32),
        DType::Bool => V::B(c != 0.0),
    }
}

fn cast(x: V, dt: DType) -> V {
    match (x, dt) {
        (V::F(a), DType::I32) => V::I(a as i32),
        (V::F(a), DType::Bool) => V::B(a != 0.0),
        (V::I(a), DType::F32) => V::F(a as f32),
        (V::I(a), DType::Bool) => V::B(a != 0),
        (V::B(a), DType::I32) => V::I(i32::from(a)),
        (x, _) => {
            if dt == DType::F32 {
                V::F(x.f())
            } else {
                x
            }
        }
    }
}

fn unary(op: UnaryOp, x: V) -> std::result::Result<V, String> {
    let undefined = || format!("{op:?} is not defined on {x:?}");
    Ok(match x {
        V::B(b) if op == UnaryOp::Not => V::B(!b),
        V::I(a) => V::I(scalar::i32_unary(op).ok_or_else(undefined)?(a)),
        V::F(a) => V::F(scalar::f32_unary(op).ok_or_else(undefined)?(a)),
        V::B(_) => return Err(undefined()),
    })
}

fn binary(op: BinaryOp, x: V, y: V) -> std::result::Result<V, String> {
    let undefined = |t: &str| format!("{op:?} is not defined on {t}");
    Ok(match (x, y) {
        (V::F(p), V::F(q)) => match (scalar::f32_binary(op), scalar::compare::<f32>(op)) {
            (Some(f), _) => V::F(f(p, q)),
            (None, Some(c)) => V::B(c(p, q)),
            (None, None) => return Err(undefined("f32")),
        },
        (V::I(p), V::I(q)) => {
            if op == BinaryOp::Div && q == 0 {
                return Err("integer division by zero".into());
            }
            match (scalar::i32_binary(op), scalar::compare::<i32>(op)) {
                (Some(f), _) => V::I(f(p, q)),
                (None, Some(c)) => V::B(c(p, q)),
                (None, None) => return Err(undefined("i32")),
            }
        }
        (V::B(p), V::B(q)) => V::B(scalar::bool_binary(op).ok_or_else(|| undefined("bool"))?(
            p, q,
        )),
        (x, y) => return Err(format!("{op:?} operands differ: {x:?} vs {y:?}")),
    })
}
