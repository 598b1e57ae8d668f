//! The runtime's error type. Every failure caused by user-supplied data
//! (inputs, weights, tensors) is reported as a [`RuntimeError`] naming the
//! input, parameter or node scope involved; the runtime never panics on them.

use kiln_compiler::ir::DType;

/// Everything that can go wrong while building tensors, preparing weights or
/// running a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// A tensor's element count does not match its shape.
    #[error("tensor data has {len} elements but shape {shape:?} needs {expected}")]
    DataLength {
        /// The shape given.
        shape: Vec<usize>,
        /// Elements the shape needs (its product).
        expected: usize,
        /// Elements supplied.
        len: usize,
    },

    /// Two tensors that must have the same shape (or dtype) do not.
    #[error("tensor mismatch: {0}")]
    TensorMismatch(String),

    /// The graph declares an input that was not supplied.
    #[error("missing input `{name}` (declared as {declared}); supplied: [{supplied}]")]
    MissingInput {
        /// The missing input.
        name: String,
        /// Its declared type, e.g. `i32[batch, seq]`.
        declared: String,
        /// The names that were supplied, comma-separated.
        supplied: String,
    },

    /// An input was supplied that the graph does not declare.
    #[error("unexpected input `{name}`; the graph `{graph}` declares: [{declared}]")]
    UnexpectedInput {
        /// The unknown input.
        name: String,
        /// The graph being run.
        graph: String,
        /// The inputs the graph declares, comma-separated.
        declared: String,
    },

    /// The same input name was supplied twice.
    #[error("input `{name}` supplied more than once")]
    DuplicateInput {
        /// The repeated input name.
        name: String,
    },

    /// An input has the wrong dtype.
    #[error("input `{name}`: expected dtype {expected}, got {got}")]
    InputDType {
        /// The input.
        name: String,
        /// The declared dtype.
        expected: DType,
        /// The supplied tensor's dtype.
        got: DType,
    },

    /// An input has the wrong rank.
    #[error("input `{name}`: declared as {declared} (rank {expected}), got shape {got:?} (rank {})", got.len())]
    InputRank {
        /// The input.
        name: String,
        /// Its declared type.
        declared: String,
        /// The declared rank.
        expected: usize,
        /// The supplied shape.
        got: Vec<usize>,
    },

    /// Two inputs (or two axes of one input) bind a symbol to different values.
    #[error(
        "symbol `{symbol}` bound to {first_value} by input `{first_input}` axis {first_axis}, \
         but input `{second_input}` axis {second_axis} has {second_value}"
    )]
    SymbolConflict {
        /// The symbolic dim.
        symbol: String,
        /// The input that bound it first.
        first_input: String,
        /// The axis of `first_input` that bound it.
        first_axis: usize,
        /// The value it was bound to first.
        first_value: usize,
        /// The input that disagrees.
        second_input: String,
        /// The axis of `second_input`.
        second_axis: usize,
        /// The conflicting size.
        second_value: usize,
    },

    /// An input dim does not match its declared (constant or compound) dim.
    #[error(
        "input `{name}` axis {axis}: declared `{declared}` = {expected}, got {got} (shape {shape:?})"
    )]
    InputDim {
        /// The input.
        name: String,
        /// The axis that does not match.
        axis: usize,
        /// The declared dim expression.
        declared: String,
        /// Its value under the current bindings.
        expected: usize,
        /// The supplied size.
        got: usize,
        /// The whole supplied shape.
        shape: Vec<usize>,
    },

    /// A symbol used by a node's shape is not bound by any input, or a
    /// symbolic expression evaluates to a negative value.
    #[error("{scope}: {op}: cannot evaluate dim `{dim}` with bindings {{{bindings}}}")]
    UnboundDim {
        /// Scope (module path) of the node.
        scope: String,
        /// The node's op.
        op: String,
        /// The dim expression that failed.
        dim: String,
        /// The symbol bindings in force, rendered.
        bindings: String,
    },

    /// The weights do not match the graph's parameters. Lists every problem.
    #[error("weights do not match graph `{graph}`:\n  {}", problems.join("\n  "))]
    Weights {
        /// The graph whose parameters were checked.
        graph: String,
        /// One line per problem.
        problems: Vec<String>,
    },

    /// An op failed at run time (out-of-range gather index, slice out of
    /// bounds, integer division by zero, ...).
    #[error("{scope}: {op} (node {node}): {message}")]
    Op {
        /// Scope (module path) of the failing node.
        scope: String,
        /// The node's op.
        op: String,
        /// The node's index in the graph.
        node: usize,
        /// What went wrong.
        message: String,
    },

    /// A graph built through the IR's API is malformed (a cycle, an output
    /// naming a missing node).
    #[error("malformed graph: {0}")]
    MalformedGraph(String),

    /// A kernel failed at run time (an out-of-range gather index, ...).
    #[error("`{program}` kernel k{kernel} ({kind}): {message}")]
    Kernel {
        /// The kernel program.
        program: String,
        /// The kernel's number in it.
        kernel: usize,
        /// The kernel's kind.
        kind: &'static str,
        /// What went wrong.
        message: String,
    },

    /// The GPU device failed or refused: no adapter, a tensor over the
    /// adapter's largest binding, a shader the driver rejects, a lost
    /// device. The message names the tensor or kernel.
    #[error("{0}")]
    Device(String),

    /// A request beyond what the model or its configured limits allow: a
    /// token id outside the vocabulary, a sequence past `max_positions`, a
    /// step over the memory budget. The message says what would fit.
    #[error("{0}")]
    Limit(String),

    /// The compiler could not turn a part into its kernel program (an
    /// unknown pass name is the caller's mistake; the rest are faults).
    #[error(transparent)]
    Compile(#[from] kiln_compiler::compile::CompileError),

    /// `--backend` (or an API call) names no backend of this build.
    #[error("unknown backend `{name}`: this build has {known}")]
    UnknownBackend {
        /// The name given.
        name: String,
        /// The registered backends, comma-separated.
        known: String,
    },

    /// A call the model cannot serve as made: a part it lacks (encoding
    /// with a decoder-only model), an empty sequence, a session used out of
    /// order. The message says what to do instead.
    #[error("{0}")]
    Request(String),

    /// A fault inside kiln (an invariant of compiled code broken): a bug
    /// to report, never the caller's input.
    #[error("internal error: {message}")]
    Internal {
        /// What broke.
        message: String,
    },

    /// A valid request this backend or build does not offer (f16 weights
    /// on the CPU). The message says what does.
    #[error("{0}")]
    Unsupported(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
