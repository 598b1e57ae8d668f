//! Executing a [`Plan`]: read, convert to f32, transform, and collect the
//! canonical [`Weights`].

use super::error::CheckpointError;
use super::plan::{Plan, Step, StepOp};
use super::reader::Checkpoint;
use kiln_runtime::Tensor;
use kiln_runtime::Weights;

impl Checkpoint {
    /// Load the parameters `plan` names (from [`Checkpoint::plan`] on this
    /// checkpoint), calling `progress(done_bytes, total_bytes)` after each
    /// tensor read. Tied copies (an LM head equal to the embedding) are
    /// compared with their parameter and must be identical.
    pub fn load(
        &self,
        plan: &Plan,
        mut progress: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<Weights, CheckpointError> {
        if plan.path != self.path() {
            return Err(CheckpointError::Model(format!(
                "the plan was made for {}, not {}",
                plan.path.display(),
                self.path().display()
            )));
        }
        let mut weights = Weights::new();
        let mut done = 0u64;
        let total = plan.total_bytes;
        if let Some(p) = progress.as_mut() {
            p(0, total);
        }
        let (tied, direct): (Vec<&Step>, Vec<&Step>) =
            plan.steps.iter().partition(|s| s.op == StepOp::Tied);
        for step in direct.into_iter().chain(tied) {
            let mut datas = Vec::with_capacity(step.sources.len());
            let mut src_shape = Vec::new();
            for name in &step.sources {
                let info = self
                    .tensors()
                    .get(name)
                    .ok_or_else(|| CheckpointError::Tensor {
                        path: self.path().to_path_buf(),
                        tensor: name.clone(),
                        message: "not in this checkpoint (plan made for another one?)".into(),
                    })?;
                let mut data = self.read_info(name, info)?;
                let mut shape = info.shape.clone();
                if step.transpose {
                    data = transpose_last2(&data, &shape);
                    let r = shape.len();
                    shape.swap(r - 2, r - 1);
                }
                src_shape = shape;
                datas.push(data);
                done += info.byte_len() as u64;
                if let Some(p) = progress.as_mut() {
                    p(done, total);
                }
            }
            let bad = |message: String| CheckpointError::Tensor {
                path: self.path().to_path_buf(),
                tensor: step.sources[0].clone(),
                message,
            };
            let tensor = |shape: &[usize], data: Vec<f32>| {
                Tensor::from_f32(shape, data).map_err(|e| bad(e.to_string()))
            };
            match step.op {
                StepOp::Copy => {
                    let (name, shape) = &step.targets[0];
                    let data = datas.pop().expect("one source");
                    weights.insert(name.clone(), tensor(shape, data)?);
                }
                StepOp::Stack => {
                    let (name, shape) = &step.targets[0];
                    weights.insert(name.clone(), tensor(shape, datas.concat())?);
                }
                StepOp::Split { axis, groups } => {
                    let data = datas.pop().expect("one source");
                    let sizes: Vec<usize> = step.targets.iter().map(|(_, s)| s[axis]).collect();
                    let parts = split(&data, &src_shape, axis, groups, &sizes);
                    for ((name, shape), part) in step.targets.iter().zip(parts) {
                        weights.insert(name.clone(), tensor(shape, part)?);
                    }
                }
                StepOp::Tied => {
                    let (name, shape) = &step.targets[0];
                    let data = datas.pop().expect("one source");
                    let copy = tensor(shape, data)?;
                    let Some(target) = weights.get(name) else {
                        return Err(bad(format!(
                            "is tied to `{name}`, which the checkpoint does not provide"
                        )));
                    };
                    let diff = copy.max_abs_diff(target).map_err(|e| bad(e.to_string()))?;
                    if diff != 0.0 {
                        let info = &self.tensors()[&step.sources[0]];
                        return Err(CheckpointError::TiedMismatch {
                            path: self.file_of(info).to_path_buf(),
                            tensor: step.sources[0].clone(),
                            target: name.clone(),
                            max_diff: diff,
                        });
                    }
                }
            }
        }
        Ok(weights)
    }
}

/// Swap the last two axes of a row-major tensor (rank >= 2).
pub(crate) fn transpose_last2(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let r = shape.len();
    let (rows, cols) = (shape[r - 2], shape[r - 1]);
    let mat = rows * cols;
    let mut out = vec![0.0; data.len()];
    if mat == 0 {
        return out;
    }
    for (src, dst) in data.chunks_exact(mat).zip(out.chunks_exact_mut(mat)) {
        for i in 0..rows {
            for j in 0..cols {
                dst[j * rows + i] = src[i * cols + j];
            }
        }
    }
    out
}

/// Split `data` (row-major `shape`) along `axis` into parts of `sizes`.
/// With `groups > 1` the axis is `groups` repetitions of
/// `[sizes[0] / groups, sizes[1] / groups, ...]` (per-head interleaving).
pub(crate) fn split(
    data: &[f32],
    shape: &[usize],
    axis: usize,
    groups: usize,
    sizes: &[usize],
) -> Vec<Vec<f32>> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let chunks: Vec<usize> = sizes.iter().map(|s| s / groups).collect();
    let group_len: usize = chunks.iter().sum();
    let mut parts: Vec<Vec<f32>> = sizes
        .iter()
        .map(|s| Vec::with_capacity(outer * s * inner))
        .collect();
    for o in 0..outer {
        for g in 0..groups {
            let mut off = (o * shape[axis] + g * group_len) * inner;
            for (part, &c) in parts.iter_mut().zip(&chunks) {
                part.extend_from_slice(&data[off..off + c * inner]);
                off += c * inner;
            }
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_last_two_axes() {
        let d: Vec<f32> = (0..12).map(|x| x as f32).collect();
        assert_eq!(
            transpose_last2(&d[..6], &[2, 3]),
            vec![0., 3., 1., 4., 2., 5.]
        );
        let t = transpose_last2(&d, &[2, 2, 3]);
        assert_eq!(&t[6..], &[6., 9., 7., 10., 8., 11.]);
    }

    #[test]
    fn split_contiguous_and_interleaved() {
        // rows 0..6 of width 1, parts 2|2|2
        let d: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let p = split(&d, &[6, 1], 0, 1, &[2, 2, 2]);
        assert_eq!(p, vec![vec![0., 1.], vec![2., 3.], vec![4., 5.]]);
        // two groups: [q0 k0 v0 | q1 k1 v1]
        let p = split(&d, &[6, 1], 0, 2, &[2, 2, 2]);
        assert_eq!(p, vec![vec![0., 3.], vec![1., 4.], vec![2., 5.]]);
        // along the last axis of [2, 3]
        let p = split(&d, &[2, 3], 1, 1, &[1, 2]);
        assert_eq!(p, vec![vec![0., 3.], vec![1., 2., 4., 5.]]);
    }
}
