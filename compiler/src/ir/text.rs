//! The stable, readable text form of a graph (what snapshots diff).
//! Nodes are renumbered `%0, %1, …` in topological order; a `# scope` line
//! opens each run of nodes from the same part of the model.

use super::graph::{Graph, NodeId};
use std::collections::HashMap;
use std::fmt::Write;

/// Render `g` as text, one numbered node per line in topological order.
pub fn to_text(g: &Graph) -> String {
    let order = g.topo_order();
    let num: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "graph \"{}\" ({} nodes, {} parameters)",
        g.name,
        order.len(),
        g.parameter_count()
    );
    let mut scope: Option<&str> = None;
    for &n in &order {
        let node = g.node(n);
        if scope != Some(node.scope.as_str()) {
            let shown = if node.scope.is_empty() {
                "(root)"
            } else {
                &node.scope
            };
            let _ = writeln!(out, "# {shown}");
            scope = Some(node.scope.as_str());
        }
        let args: Vec<String> = g.inputs(n).iter().map(|i| format!("%{}", num[i])).collect();
        let attrs = node.op.attrs();
        let mut line = format!("  %{} = {}", num[&n], node.op.name());
        if !args.is_empty() {
            line.push(' ');
            line.push_str(&args.join(", "));
        }
        if !attrs.is_empty() {
            line.push(' ');
            line.push_str(&attrs);
        }
        let _ = writeln!(out, "{line} : {}", node.ty);
    }
    let _ = writeln!(out, "outputs");
    for (name, id) in &g.outputs {
        let _ = writeln!(out, "  {name} = %{} : {}", num[id], g.ty(*id));
    }
    out
}
