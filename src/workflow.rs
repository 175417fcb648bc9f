//! Defining workflows: named steps, their handlers' kinds, and dependencies between them.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::ids::{StepId, WorkflowId};
use crate::state::StepState;

/// Default number of attempts a step gets before it is discarded.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// A workflow to insert: a name and a set of steps.
///
/// ```
/// use baton::{Step, Workflow};
/// let wf = Workflow::new("nightly-report")
///     .step(Step::new("extract", "sql-export"))
///     .step(Step::new("render", "render").depends_on(["extract"]).max_attempts(5));
/// assert_eq!(wf.steps().len(), 2);
/// // A step depending on itself is a cycle:
/// let bad = Workflow::new("loop").step(Step::new("a", "k").depends_on(["a"]));
/// assert!(bad.validate().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Workflow {
    pub(crate) id: WorkflowId,
    pub(crate) name: String,
    pub(crate) steps: Vec<Step>,
}

/// One step of a [`Workflow`].
///
/// ```
/// let step = baton::Step::new("fetch", "http-get")
///     .args(serde_json::json!({"url": "https://example.com"}))
///     .max_attempts(5);
/// assert_eq!(step.name(), "fetch");
/// ```
#[derive(Clone, Debug)]
pub struct Step {
    pub(crate) id: StepId,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) args: Value,
    pub(crate) max_attempts: u32,
    pub(crate) depends_on: Vec<String>,
}

impl Step {
    /// A step named `name` (unique within its workflow) run by the handler registered for `kind`.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            id: StepId::new(),
            name: name.into(),
            kind: kind.into(),
            args: Value::Null,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            depends_on: Vec::new(),
        }
    }

    /// Arguments handed to the handler (any JSON value).
    pub fn args(mut self, args: Value) -> Self {
        self.args = args;
        self
    }

    /// How many attempts the step gets before it is discarded (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Steps (by name, in the same workflow) that must complete before this one runs.
    pub fn depends_on<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.depends_on.extend(names.into_iter().map(Into::into));
        self
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step's id, fixed when the step is defined.
    pub fn id(&self) -> StepId {
        self.id
    }
}

impl Workflow {
    /// An empty workflow. A workflow with no steps is announced `completed` as soon as it is inserted.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            id: WorkflowId::new(),
            name: name.into(),
            steps: Vec::new(),
        }
    }

    /// Adds a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Adds many steps.
    pub fn steps_from(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.steps.extend(steps);
        self
    }

    /// The workflow's id, fixed when it is defined.
    pub fn id(&self) -> WorkflowId {
        self.id
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The steps, in the order they were added.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Checks names, dependencies and acyclicity.
    ///
    /// # Errors
    /// [`Error::InvalidWorkflow`] for an empty workflow or step name, an empty kind, a duplicate
    /// step name, a dependency on an unknown step, `max_attempts` of 0, or a cycle.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidWorkflow(msg));
        if self.name.trim().is_empty() {
            return invalid("the workflow name is empty".into());
        }
        let mut index = HashMap::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            if step.name.trim().is_empty() {
                return invalid(format!("step #{} has an empty name", i + 1));
            }
            if step.kind.trim().is_empty() {
                return invalid(format!("step {:?} has an empty kind", step.name));
            }
            if step.max_attempts == 0 {
                return invalid(format!("step {:?} has max_attempts 0", step.name));
            }
            if index.insert(step.name.as_str(), i).is_some() {
                return invalid(format!("duplicate step name {:?}", step.name));
            }
        }
        // Kahn's algorithm: whatever is left unvisited lies on a cycle.
        let mut indegree = vec![0usize; self.steps.len()];
        let mut dependents = vec![Vec::new(); self.steps.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for dep in &step.depends_on {
                let Some(&j) = index.get(dep.as_str()) else {
                    return invalid(format!(
                        "step {:?} depends on unknown step {:?}",
                        step.name, dep
                    ));
                };
                indegree[i] += 1;
                dependents[j].push(i);
            }
        }
        let mut ready: VecDeque<usize> = (0..self.steps.len())
            .filter(|&i| indegree[i] == 0)
            .collect();
        let mut visited = 0;
        while let Some(i) = ready.pop_front() {
            visited += 1;
            for &k in &dependents[i] {
                indegree[k] -= 1;
                if indegree[k] == 0 {
                    ready.push_back(k);
                }
            }
        }
        if visited < self.steps.len() {
            let on_cycle: Vec<&str> = (0..self.steps.len())
                .filter(|&i| indegree[i] > 0)
                .map(|i| self.steps[i].name.as_str())
                .take(5)
                .collect();
            return invalid(format!(
                "dependency cycle through steps {}",
                on_cycle.join(", ")
            ));
        }
        Ok(())
    }

    /// The rows to insert for a new workflow: steps without dependencies are available at once.
    pub(crate) fn rows(&self) -> Vec<NewStepRow<'_>> {
        self.steps
            .iter()
            .map(|step| NewStepRow {
                step,
                state: if step.depends_on.is_empty() {
                    StepState::Available
                } else {
                    StepState::Scheduled
                },
                pending: step.depends_on.len() as u32,
            })
            .collect()
    }

    /// Dependency edges as (step, depends_on) id pairs; call after [`validate`](Self::validate).
    pub(crate) fn edges(&self) -> Vec<(StepId, StepId)> {
        let ids: HashMap<&str, StepId> =
            self.steps.iter().map(|s| (s.name.as_str(), s.id)).collect();
        let ids = &ids;
        self.steps
            .iter()
            .flat_map(|s| s.depends_on.iter().map(move |d| (s.id, ids[d.as_str()])))
            .collect()
    }
}

/// A step to insert, with its initial state and number of dependencies not yet completed.
#[derive(Debug)]
pub(crate) struct NewStepRow<'a> {
    pub(crate) step: &'a Step,
    pub(crate) state: StepState,
    pub(crate) pending: u32,
}

/// Rows to insert and their dependency edges (step, depends_on).
pub(crate) type Plan<'a> = (Vec<NewStepRow<'a>>, Vec<(StepId, StepId)>);

/// Plans steps added to a running workflow by one of its steps. `existing` maps the names of
/// the workflow's steps that `added` mentions (as names or dependencies) to their id and state.
///
/// A new step whose existing dependency already failed is inserted `cancelled`.
pub(crate) fn plan_additions<'a>(
    added: &'a [Step],
    existing: &HashMap<String, (StepId, StepState)>,
) -> Result<Plan<'a>> {
    let invalid = |msg: String| Err(Error::InvalidWorkflow(msg));
    // Validate the new steps among themselves (names, kinds, cycles), existing deps set aside.
    let mut own = Workflow::new("added steps");
    for step in added {
        if existing.contains_key(&step.name) {
            return invalid(format!(
                "added step {:?} duplicates an existing step",
                step.name
            ));
        }
        let mut alone = step.clone();
        alone.depends_on.retain(|d| !existing.contains_key(d));
        own.steps.push(alone);
    }
    own.validate()?;
    let new_ids: HashMap<&str, StepId> = added.iter().map(|s| (s.name.as_str(), s.id)).collect();
    let mut rows = Vec::with_capacity(added.len());
    let mut edges = Vec::new();
    for step in added {
        let mut pending = 0;
        let mut failed_dep = false;
        for dep in &step.depends_on {
            if let Some(&id) = new_ids.get(dep.as_str()) {
                pending += 1;
                edges.push((step.id, id));
            } else if let Some(&(id, state)) = existing.get(dep) {
                edges.push((step.id, id));
                match state {
                    StepState::Completed => {}
                    StepState::Discarded | StepState::Cancelled => failed_dep = true,
                    _ => pending += 1,
                }
            }
        }
        let state = if failed_dep {
            StepState::Cancelled
        } else if pending == 0 {
            StepState::Available
        } else {
            StepState::Scheduled
        };
        rows.push(NewStepRow {
            step,
            state,
            pending,
        });
    }
    Ok((rows, edges))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(wf: Workflow) -> String {
        wf.validate().unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_definitions_with_clear_messages() {
        assert!(err(Workflow::new(" ")).contains("workflow name is empty"));
        assert!(err(Workflow::new("w").step(Step::new("", "k"))).contains("empty name"));
        assert!(
            err(Workflow::new("w")
                .step(Step::new("a", "k"))
                .step(Step::new("a", "k")))
            .contains("duplicate step name \"a\"")
        );
        assert!(
            err(Workflow::new("w").step(Step::new("a", "k").depends_on(["nope"])))
                .contains("unknown step \"nope\"")
        );
        assert!(
            err(Workflow::new("w").step(Step::new("a", "k").max_attempts(0)))
                .contains("max_attempts 0")
        );
        let cycle = Workflow::new("w")
            .step(Step::new("a", "k").depends_on(["c"]))
            .step(Step::new("b", "k").depends_on(["a"]))
            .step(Step::new("c", "k").depends_on(["b"]))
            .step(Step::new("free", "k"));
        let msg = err(cycle);
        assert!(
            msg.contains("cycle") && msg.contains("a") && !msg.contains("free"),
            "{msg}"
        );
    }

    #[test]
    fn accepts_a_diamond_and_lists_its_edges() {
        let wf = Workflow::new("w")
            .step(Step::new("root", "k"))
            .step(Step::new("l", "k").depends_on(["root"]))
            .step(Step::new("r", "k").depends_on(["root"]))
            .step(Step::new("join", "k").depends_on(["l", "r"]));
        wf.validate().unwrap();
        assert_eq!(wf.edges().len(), 4);
    }

    #[test]
    fn additions_depend_on_new_and_existing_steps() {
        let existing: HashMap<String, (StepId, StepState)> = [
            ("done".to_string(), (StepId::new(), StepState::Completed)),
            ("busy".to_string(), (StepId::new(), StepState::Executing)),
            ("bad".to_string(), (StepId::new(), StepState::Discarded)),
        ]
        .into();
        let added = vec![
            Step::new("a", "k").depends_on(["done"]),
            Step::new("b", "k").depends_on(["a", "busy"]),
            Step::new("c", "k").depends_on(["bad"]),
        ];
        let (rows, edges) = plan_additions(&added, &existing).unwrap();
        let summary: Vec<(StepState, u32)> = rows.iter().map(|r| (r.state, r.pending)).collect();
        assert_eq!(
            summary,
            vec![
                (StepState::Available, 0),
                (StepState::Scheduled, 2),
                (StepState::Cancelled, 0)
            ]
        );
        assert_eq!(edges.len(), 4);
        let dup = vec![Step::new("done", "k")];
        assert!(plan_additions(&dup, &existing).is_err());
        let unknown = vec![Step::new("x", "k").depends_on(["nope"])];
        assert!(
            plan_additions(&unknown, &existing)
                .unwrap_err()
                .to_string()
                .contains("unknown step")
        );
    }

    #[test]
    fn zero_steps_is_valid() {
        Workflow::new("empty").validate().unwrap();
    }
}
