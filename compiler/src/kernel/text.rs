//! The text form of a [`KernelProgram`]: stable and readable, for snapshots
//! and `kiln compile --emit kernels`.

use super::{Body, BufferKind, Inst, Kernel, KernelProgram, View};
use crate::ir::{Dim, fmt_num};
use crate::kernel::kinds;
use std::fmt::Write;

fn shape(s: &[Dim]) -> String {
    let v: Vec<String> = s.iter().map(ToString::to_string).collect();
    format!("[{}]", v.join(", "))
}

fn view(v: &View) -> String {
    let s: Vec<String> = v.strides.iter().map(ToString::to_string).collect();
    format!("b{}[{}; {}]", v.buf, v.offset, s.join(", "))
}

fn body(out: &mut String, b: &Body, indent: &str) {
    for (i, (inst, dt)) in b.insts.iter().enumerate() {
        let rhs = match inst {
            Inst::Load(l) => format!("load l{l}"),
            Inst::Const(c) => format!("const {}", fmt_num(*c)),
            Inst::Index(a) => format!("index {a}"),
            Inst::Size(s) => format!("size {s}"),
            Inst::Unary(u, x) => format!("{} v{x}", format!("{u:?}").to_lowercase()),
            Inst::Binary(op, x, y) => format!("{} v{x}, v{y}", format!("{op:?}").to_lowercase()),
            Inst::Select(c, x, y) => format!("select v{c}, v{x}, v{y}"),
            Inst::Cast(x) => format!("cast v{x}"),
            Inst::Reduced(s) => format!("reduced {s}"),
        };
        let _ = writeln!(out, "{indent}v{i} = {rhs} : {dt}");
    }
    let _ = writeln!(out, "{indent}-> v{}", b.result);
}

fn loads(out: &mut String, loads: &[View], indent: &str) {
    for (i, l) in loads.iter().enumerate() {
        let _ = writeln!(out, "{indent}l{i} = {}", view(l));
    }
}

pub fn to_text(p: &KernelProgram) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kernels \"{}\" ({} kernels, {} buffers, {} slots; from {} graph nodes)",
        p.name,
        p.kernels.len(),
        p.buffers.len(),
        p.plan.slots.len(),
        p.graph_nodes
    );
    for (i, b) in p.buffers.iter().enumerate() {
        let kind = match &b.kind {
            BufferKind::Input(n) => format!("input \"{n}\""),
            BufferKind::Param(n) if p.joined.contains_key(n) => format!("param \"{n}\" (joined)"),
            BufferKind::Param(n) => format!("param \"{n}\""),
            BufferKind::Output => {
                let names: Vec<&str> = p
                    .outputs
                    .iter()
                    .filter(|(_, id)| *id == i)
                    .map(|(n, _)| n.as_str())
                    .collect();
                format!("output \"{}\"", names.join("\", \""))
            }
            BufferKind::Temp => match p.plan.slot_of.get(i).copied().flatten() {
                Some(s) => format!("temp {} slot {s}", b.name),
                None => format!("temp {}", b.name),
            },
            BufferKind::Const(v) => format!("const {} ({} values)", b.name, v.len()),
        };
        let storage = match b.capacity {
            Some(_) => format!(" in {}", shape(&b.storage_shape())),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  b{i} = {kind} : {}{}{storage}",
            b.dtype,
            shape(&b.shape)
        );
    }
    for a in &p.appends {
        let _ = writeln!(
            out,
            "  append b{} -> b{} along axis {} (k{} copies the old rows)",
            a.past, a.present, a.axis, a.copy
        );
    }
    for (i, k) in p.kernels.iter().enumerate() {
        match k {
            Kernel::Elementwise(kinds::Elementwise {
                out: o,
                domain,
                loads: ls,
                body: bd,
            }) => {
                let _ = writeln!(out, "k{i} elementwise {} over {}", view(o), shape(domain));
                loads(&mut out, ls, "    ");
                body(&mut out, bd, "    ");
            }
            Kernel::RowReduce(kinds::RowReduce {
                out: o,
                domain,
                loads: ls,
                stages,
                epilogue,
                per_row,
            }) => {
                let _ = writeln!(
                    out,
                    "k{i} row_reduce {} over {}{}",
                    view(o),
                    shape(domain),
                    if *per_row { " per row" } else { "" }
                );
                loads(&mut out, ls, "    ");
                for (s, st) in stages.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "  stage {s} {}:",
                        format!("{:?}", st.op).to_lowercase()
                    );
                    body(&mut out, &st.body, "    ");
                }
                let _ = writeln!(out, "  epilogue:");
                body(&mut out, epilogue, "    ");
            }
            Kernel::Gemm(kinds::Gemm {
                out: o,
                a,
                b,
                batch,
                m,
                n,
                k: kk,
                epilogue,
                rows,
            }) => {
                let _ = writeln!(
                    out,
                    "k{i} gemm {} = {} x {} batch={} m={m} n={n} k={kk}{}",
                    view(o),
                    view(a),
                    view(b),
                    shape(batch),
                    rows.as_ref()
                        .map(|r| format!(" rows where {} != 0", view(r)))
                        .unwrap_or_default()
                );
                if let Some(e) = epilogue {
                    let _ = writeln!(out, "  epilogue (reduced 0 = product):");
                    loads(&mut out, &e.loads, "    ");
                    body(&mut out, &e.body, "    ");
                }
            }
            Kernel::Gather(kinds::Gather {
                out: o,
                table,
                indices,
                indices_shape,
                axis,
            }) => {
                let _ = writeln!(
                    out,
                    "k{i} gather b{o} = b{table} axis={axis} at {} over {}",
                    view(indices),
                    shape(indices_shape)
                );
            }
            Kernel::Attention(kinds::Attention {
                out: o,
                q,
                kt,
                v,
                batch,
                m,
                keys,
                d,
                dv,
                score,
            }) => {
                let _ = writeln!(
                    out,
                    "k{i} attention {} = softmax({} x {}) x {} batch={} m={m} keys={keys} d={d} dv={dv}",
                    view(o),
                    view(q),
                    view(kt),
                    view(v),
                    shape(batch)
                );
                if let Some(e) = score {
                    let _ = writeln!(out, "  score (reduced 0 = q·k):");
                    loads(&mut out, &e.loads, "    ");
                    body(&mut out, &e.body, "    ");
                }
            }
            Kernel::Copy(kinds::Copy {
                out: o,
                domain,
                src,
            }) => {
                let _ = writeln!(
                    out,
                    "k{i} copy {} = {} over {}",
                    view(o),
                    view(src),
                    shape(domain)
                );
            }
        }
    }
    out
}
