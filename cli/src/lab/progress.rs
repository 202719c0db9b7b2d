//! One node's progress through the stages of `up`, shared by its provider (machine stages) and the lab layer
//! (the agent and what follows): the stage names on the node's progress line and their timings in `up`'s
//! outcome.

use std::time::Instant;

use crate::ui::Task;

use super::state::Stage;

/// Times the stages of one node and names them on its progress line.
pub struct NodeProgress {
    task: Task,
    current: Option<(Stage, Instant)>,
    done: Vec<(Stage, f64)>,
}

impl NodeProgress {
    pub fn new(task: Task) -> Self {
        NodeProgress { task, current: None, done: Vec::new() }
    }

    /// Starts `stage` and ends the one before. Entering the stage that runs already changes nothing, so the
    /// lab layer can enter the SSH stage whether or not the provider already waited in it.
    pub fn enter(&mut self, stage: Stage) {
        if self.current.is_some_and(|(s, _)| s == stage) {
            return;
        }
        self.close();
        self.task.stage(stage.as_str());
        self.current = Some((stage, Instant::now()));
    }

    fn close(&mut self) {
        if let Some((stage, t)) = self.current.take() {
            self.done.push((stage, (t.elapsed().as_secs_f64() * 10.0).round() / 10.0));
        }
    }

    /// The node's progress line.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Ends the running stage; returns the seconds spent in each stage, in order.
    pub fn finish(&mut self) -> Vec<(Stage, f64)> {
        self.close();
        std::mem::take(&mut self.done)
    }
}
