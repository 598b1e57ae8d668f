//! Graphviz export: one cluster per scope so the picture follows the model's structure.

use super::graph::{Graph, NodeId};
use super::op::Op;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Render `g` as Graphviz DOT, nodes in topological order and clustered by scope.
pub fn to_dot(g: &Graph) -> String {
    let order = g.topo_order();
    let mut clusters: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for &n in &order {
        clusters
            .entry(g.node(n).scope.as_str())
            .or_default()
            .push(n);
    }
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", g.name.replace('"', "'"));
    let _ = writeln!(
        out,
        "  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    for (i, (scope, nodes)) in clusters.iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{i} {{\n    label=\"{scope}\";");
        for &n in nodes {
            let node = g.node(n);
            let style = match node.op {
                Op::Input { .. } => ", style=filled, fillcolor=lightblue",
                Op::Parameter { .. } => ", style=filled, fillcolor=lightyellow",
                Op::MatMul => ", style=filled, fillcolor=lightpink",
                _ => "",
            };
            let label = format!("{}\\n{}", node.op, node.ty).replace('"', "\\\"");
            let _ = writeln!(out, "    n{} [label=\"{label}\"{style}];", n.index());
        }
        let _ = writeln!(out, "  }}");
    }
    for &n in &order {
        for (slot, i) in g.inputs(n).iter().enumerate() {
            let _ = writeln!(
                out,
                "  n{} -> n{} [label=\"{slot}\", fontsize=8];",
                i.index(),
                n.index()
            );
        }
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(
            out,
            "  out_{name_} [label=\"{name}\", shape=ellipse];\n  n{} -> out_{name_};",
            id.index(),
            name_ = name.replace('.', "_")
        );
    }
    out.push_str("}\n");
    out
}
