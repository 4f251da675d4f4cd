//! The fixed network's evaluation-mode forward pass as a [`Trace`] walk (see
//! [`crate::ops::trace`]): logits only, the auxiliary head is not part of inference.
use super::{Cell, Network, Stem};
use crate::ops::trace::Trace;

impl Cell {
    fn trace<T: Trace>(&self, t: &mut T, s0: &T::Value, s1: &T::Value) -> T::Value {
        let mut states = vec![self.preprocess0.trace(t, s0), self.preprocess1.trace(t, s1)];
        for (ops, inputs) in self.ops.chunks(2).zip(self.inputs.chunks(2)) {
            let mut node: Option<T::Value> = None;
            for (op, &from) in ops.iter().zip(inputs) {
                let h = op.trace(t, &states[from]);
                node = Some(match node {
                    None => h,
                    Some(acc) => t.add(&acc, &h),
                });
            }
            if let Some(node) = node {
                states.push(node);
            }
        }
        let outputs: Vec<T::Value> = self.concat.iter().map(|&i| states[i].clone()).collect();
        t.concat(&outputs)
    }
}

impl Stem {
    fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> (T::Value, T::Value) {
        match self {
            Stem::Cifar { conv, bn } => {
                let s = conv.trace(t, x);
                let s = t.batch_norm(&s, bn);
                (s.clone(), s)
            }
            Stem::Imagenet { conv0a, bn0a, conv0b, bn0b, conv1, bn1 } => {
                let s0 = conv0a.trace(t, x);
                let s0 = t.batch_norm(&s0, bn0a);
                let s0 = t.relu(&s0);
                let s0 = conv0b.trace(t, &s0);
                let s0 = t.batch_norm(&s0, bn0b);
                let s1 = t.relu(&s0);
                let s1 = conv1.trace(t, &s1);
                let s1 = t.batch_norm(&s1, bn1);
                (s0, s1)
            }
        }
    }
}

impl Network {
    /// Walks the evaluation-mode computation from the input `x` to the logits.
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        let (mut s0, mut s1) = self.stem.trace(t, x);
        for cell in &self.cells {
            let next = cell.trace(t, &s0, &s1);
            s0 = std::mem::replace(&mut s1, next);
        }
        let pooled = t.global_avg_pool(&s1);
        self.classifier.trace(t, &pooled)
    }
}
