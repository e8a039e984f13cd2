//! The register model and the recorded history of client operations.

use core::fmt;

/// A key of the key-value store.
pub type Key = u64;
/// A value stored under a key.
pub type Value = u64;
/// A logical time, as supplied by the simulator.
pub type Time = u64;
/// Identifies the client that issued an operation (only used in reports).
pub type ClientId = u64;

/// An operation on the key-value store.
///
/// `None` stands for "the key is absent".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Store `value` under `key`; answers [`Output::Done`].
    Put {
        /// The key written.
        key: Key,
        /// The value written.
        value: Value,
    },
    /// Read `key`; answers [`Output::Read`].
    Get {
        /// The key read.
        key: Key,
    },
    /// Remove `key`; answers [`Output::Done`].
    Delete {
        /// The key removed.
        key: Key,
    },
    /// If `key` currently holds `expected`, replace it by `new`; answers [`Output::Cas`]
    /// with `true` if the swap happened.
    CompareAndSet {
        /// The key compared and possibly written.
        key: Key,
        /// The value the key must hold (`None`: must be absent).
        expected: Option<Value>,
        /// The value to store (`None`: remove the key).
        new: Option<Value>,
    },
}

impl Op {
    /// The key this operation touches.
    pub fn key(&self) -> Key {
        match *self {
            Op::Put { key, .. }
            | Op::Get { key }
            | Op::Delete { key }
            | Op::CompareAndSet { key, .. } => key,
        }
    }

    /// The sequential specification: applies the operation to the value `current` held by
    /// its key and returns the new value and the operation's output.
    ///
    /// ```
    /// use coracle_tests::linearizability::{Op, Output};
    /// let cas = Op::CompareAndSet { key: 1, expected: None, new: Some(4) };
    /// assert_eq!(cas.apply(None), (Some(4), Output::Cas(true)));
    /// assert_eq!(cas.apply(Some(3)), (Some(3), Output::Cas(false)));
    /// ```
    pub fn apply(&self, current: Option<Value>) -> (Option<Value>, Output) {
        match *self {
            Op::Put { value, .. } => (Some(value), Output::Done),
            Op::Get { .. } => (current, Output::Read(current)),
            Op::Delete { .. } => (None, Output::Done),
            Op::CompareAndSet { expected, new, .. } => {
                if current == expected {
                    (new, Output::Cas(true))
                } else {
                    (current, Output::Cas(false))
                }
            }
        }
    }

    /// Whether `output` is the kind of answer this operation gives (whatever its value).
    pub fn answers_with(&self, output: &Output) -> bool {
        matches!(
            (self, output),
            (Op::Put { .. } | Op::Delete { .. }, Output::Done)
                | (Op::Get { .. }, Output::Read(_))
                | (Op::CompareAndSet { .. }, Output::Cas(_))
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Put { key, value } => write!(f, "put(k={key}, v={value})"),
            Op::Get { key } => write!(f, "get(k={key})"),
            Op::Delete { key } => write!(f, "delete(k={key})"),
            Op::CompareAndSet { key, expected, new } => {
                write!(f, "cas(k={key}, expected={expected:?}, new={new:?})")
            }
        }
    }
}

/// The answer a client received for an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A [`Op::Put`] or [`Op::Delete`] was acknowledged.
    Done,
    /// A [`Op::Get`] returned this value (`None`: absent).
    Read(Option<Value>),
    /// A [`Op::CompareAndSet`] returned whether it swapped.
    Cas(bool),
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Done => f.write_str("ok"),
            Output::Read(value) => write!(f, "{value:?}"),
            Output::Cas(swapped) => write!(f, "{swapped}"),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No answer recorded yet. The checker treats it like [`Outcome::Indeterminate`].
    Pending,
    /// The client received `output` at time `completed`: the operation took effect once,
    /// somewhere between its invocation and `completed`.
    Ok {
        /// When the answer arrived.
        completed: Time,
        /// The answer.
        output: Output,
    },
    /// The client gave up (timed out): the operation may or may not have taken effect, at
    /// any time after its invocation (its completion time is infinity), and whatever it
    /// returned is unknown.
    Indeterminate,
}

/// Identifies an operation within its [`History`] (its index, in invocation-call order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(usize);

impl OpId {
    /// The position of the operation in [`History::operations`].
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One recorded operation.
///
/// Displayed as `client 3 [t=10..t=25] get(k=1) -> Some(7)`; an operation without an
/// answer shows `t=inf` as its completion and `indeterminate` or `pending` as its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// This operation's id.
    pub id: OpId,
    /// The client that issued it.
    pub client: ClientId,
    /// When it was invoked.
    pub invoked: Time,
    /// What was asked.
    pub op: Op,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    /// The completion time, `None` standing for infinity (pending or indeterminate).
    pub fn completed(&self) -> Option<Time> {
        match self.outcome {
            Outcome::Ok { completed, .. } => Some(completed),
            Outcome::Pending | Outcome::Indeterminate => None,
        }
    }

    /// The recorded answer, `None` if the operation is pending or indeterminate.
    pub fn output(&self) -> Option<Output> {
        match self.outcome {
            Outcome::Ok { output, .. } => Some(output),
            Outcome::Pending | Outcome::Indeterminate => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} [t={}..", self.client, self.invoked)?;
        match self.outcome {
            Outcome::Ok { completed, output } => {
                write!(f, "t={completed}] {} -> {output}", self.op)
            }
            Outcome::Indeterminate => write!(f, "t=inf] {} -> indeterminate", self.op),
            Outcome::Pending => write!(f, "t=inf] {} -> pending", self.op),
        }
    }
}

/// A mistake in recording a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// No operation has this id.
    UnknownOp(OpId),
    /// The operation was already completed or timed out.
    AlreadyEnded(OpId),
    /// The completion time is earlier than the invocation time.
    CompletedBeforeInvoked {
        /// The operation.
        id: OpId,
        /// Its invocation time.
        invoked: Time,
        /// The completion time given.
        completed: Time,
    },
    /// The output does not fit the operation (say, a `Get` answered with `Cas(true)`).
    OutputMismatch {
        /// The operation.
        id: OpId,
        /// What was asked.
        op: Op,
        /// The answer given.
        output: Output,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::UnknownOp(id) => write!(f, "no operation {id} in the history"),
            HistoryError::AlreadyEnded(id) => {
                write!(f, "operation {id} was already completed or timed out")
            }
            HistoryError::CompletedBeforeInvoked {
                id,
                invoked,
                completed,
            } => write!(
                f,
                "operation {id} completed at t={completed}, before its invocation at t={invoked}"
            ),
            HistoryError::OutputMismatch { id, op, output } => {
                write!(f, "operation {id} ({op}) cannot answer {output:?}")
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// The operations clients issued, with their invocation and completion times.
///
/// Built as things happen: [`History::invoke`] when a client sends a request, then
/// [`History::complete`] when it gets the answer or [`History::timeout`] when it gives up.
///
/// ```
/// use coracle_tests::linearizability::{check, Budget, History, Op, Output};
///
/// let mut history = History::new();
/// let put = history.invoke(1, 0, Op::Put { key: 7, value: 42 });
/// let get = history.invoke(2, 1, Op::Get { key: 7 });
/// history.complete(put, 5, Output::Done)?;
/// history.complete(get, 6, Output::Read(Some(42)))?;
/// assert!(check(&history, Budget::default()).is_linearizable());
/// # Ok::<(), coracle_tests::linearizability::HistoryError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` invoked `op` at `time`; the operation is pending until
    /// [`complete`](Self::complete) or [`timeout`](Self::timeout).
    pub fn invoke(&mut self, client: ClientId, time: Time, op: Op) -> OpId {
        let id = OpId(self.ops.len());
        self.ops.push(Operation {
            id,
            client,
            invoked: time,
            op,
            outcome: Outcome::Pending,
        });
        id
    }

    /// Records that operation `id` returned `output` at `time`.
    ///
    /// Times are compared with `<`: an operation is known to precede another only if it
    /// completed strictly before the other was invoked (equal times count as concurrent).
    pub fn complete(&mut self, id: OpId, time: Time, output: Output) -> Result<(), HistoryError> {
        let operation = self.pending_mut(id)?;
        if time < operation.invoked {
            return Err(HistoryError::CompletedBeforeInvoked {
                id,
                invoked: operation.invoked,
                completed: time,
            });
        }
        if !operation.op.answers_with(&output) {
            return Err(HistoryError::OutputMismatch {
                id,
                op: operation.op,
                output,
            });
        }
        operation.outcome = Outcome::Ok {
            completed: time,
            output,
        };
        Ok(())
    }

    /// Records that the client gave up on operation `id`: it may take effect at any time
    /// after its invocation, or never.
    pub fn timeout(&mut self, id: OpId) -> Result<(), HistoryError> {
        self.pending_mut(id)?.outcome = Outcome::Indeterminate;
        Ok(())
    }

    /// All operations, indexed by [`OpId::index`].
    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    /// The operation `id`, if it exists.
    pub fn get(&self, id: OpId) -> Option<&Operation> {
        self.ops.get(id.0)
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn pending_mut(&mut self, id: OpId) -> Result<&mut Operation, HistoryError> {
        let operation = self.ops.get_mut(id.0).ok_or(HistoryError::UnknownOp(id))?;
        match operation.outcome {
            Outcome::Pending => Ok(operation),
            Outcome::Ok { .. } | Outcome::Indeterminate => Err(HistoryError::AlreadyEnded(id)),
        }
    }
}

/// One operation per line, as [`Operation`] displays it, in [`OpId`] order: the text form
/// that [`History::from_str`](core::str::FromStr) reads back, to save a history found by
/// a run and check it again later.
impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for operation in &self.ops {
            writeln!(f, "{operation}")?;
        }
        Ok(())
    }
}

/// A line of a saved history that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseHistoryError {
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ParseHistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseHistoryError {}

/// Reads the text form written by [`History`]'s `Display`: one line per operation, such
/// as `client 3 [t=10..t=25] get(k=1) -> Some(7)` or
/// `client 2 [t=4..t=inf] cas(k=1, expected=None, new=Some(3)) -> indeterminate`.
/// Empty lines and lines starting with `#` are skipped; operation ids follow the order of
/// the lines.
///
/// ```
/// use coracle_tests::linearizability::{check, Budget, History};
///
/// let history: History = "# a stale read\n\
///     client 1 [t=0..t=5] put(k=1, v=7) -> ok\n\
///     client 2 [t=10..t=12] get(k=1) -> None\n"
///     .parse()?;
/// assert_eq!(history.len(), 2);
/// assert!(check(&history, Budget::default()).report().is_some());
/// assert_eq!(history.to_string().parse::<History>()?, history);
/// # Ok::<(), coracle_tests::linearizability::ParseHistoryError>(())
/// ```
impl core::str::FromStr for History {
    type Err = ParseHistoryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut history = History::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            parse_operation(&mut history, line).map_err(|reason| ParseHistoryError {
                line: number + 1,
                reason,
            })?;
        }
        Ok(history)
    }
}

/// Parses one line of a saved history into `history`.
fn parse_operation(history: &mut History, line: &str) -> Result<(), String> {
    let rest = expect_prefix(line, "client ")?;
    let (client, rest) = split_once(rest, " [t=")?;
    let client = number(client, "client id")?;
    let (invoked, rest) = split_once(rest, "..t=")?;
    let invoked = number(invoked, "invocation time")?;
    let (completed, rest) = split_once(rest, "] ")?;
    let completed = match completed {
        "inf" => None,
        t => Some(number(t, "completion time")?),
    };
    let (op, output) = split_once(rest, " -> ")?;
    let op = parse_op(op)?;
    let id = history.invoke(client, invoked, op);
    match (completed, output) {
        (None, "pending") => Ok(()),
        (None, "indeterminate") => history.timeout(id).map_err(|e| e.to_string()),
        (None, other) => Err(format!(
            "`{other}`: an operation without a completion time is `pending` or \
             `indeterminate`"
        )),
        (Some(_), "pending" | "indeterminate") => Err(format!(
            "a {output} operation has no completion time (write `t=inf`)"
        )),
        (Some(completed), output) => {
            let output = parse_output(output)?;
            history
                .complete(id, completed, output)
                .map_err(|e| e.to_string())
        }
    }
}

/// `put(k=1, v=7)`, `get(k=1)`, `delete(k=1)` or `cas(k=1, expected=None, new=Some(3))`.
fn parse_op(text: &str) -> Result<Op, String> {
    let (name, args) = split_once(text, "(")?;
    let args = args
        .strip_suffix(')')
        .ok_or_else(|| format!("`{text}`: no closing parenthesis"))?;
    let args: Vec<&str> = args.split(", ").collect();
    let arg = |i: usize, label: &str| -> Result<&str, String> {
        args.get(i)
            .and_then(|a| a.strip_prefix(label))
            .and_then(|a| a.strip_prefix('='))
            .ok_or_else(|| format!("`{text}`: argument {} should be `{label}=...`", i + 1))
    };
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("`{text}`: {name} takes {n} argument(s)"))
        }
    };
    let key = number(arg(0, "k")?, "key")?;
    match name {
        "put" => {
            arity(2)?;
            let value = number(arg(1, "v")?, "value")?;
            Ok(Op::Put { key, value })
        }
        "get" => arity(1).map(|()| Op::Get { key }),
        "delete" => arity(1).map(|()| Op::Delete { key }),
        "cas" => {
            arity(3)?;
            let expected = optional_value(arg(1, "expected")?)?;
            let new = optional_value(arg(2, "new")?)?;
            Ok(Op::CompareAndSet { key, expected, new })
        }
        other => Err(format!(
            "unknown operation `{other}` (known: put, get, delete, cas)"
        )),
    }
}

/// `ok`, `None`, `Some(7)`, `true` or `false`.
fn parse_output(text: &str) -> Result<Output, String> {
    match text {
        "ok" => Ok(Output::Done),
        "true" => Ok(Output::Cas(true)),
        "false" => Ok(Output::Cas(false)),
        value => optional_value(value)
            .map(Output::Read)
            .map_err(|_| format!("`{value}` is not an output (ok, None, Some(v), true, false)")),
    }
}

/// `None` or `Some(7)`.
fn optional_value(text: &str) -> Result<Option<Value>, String> {
    if text == "None" {
        return Ok(None);
    }
    let inner = text
        .strip_prefix("Some(")
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("`{text}` is not a value (None or Some(v))"))?;
    number(inner, "value").map(Some)
}

fn number(text: &str, what: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{what} `{text}` is not a number"))
}

fn expect_prefix<'a>(text: &'a str, prefix: &str) -> Result<&'a str, String> {
    text.strip_prefix(prefix)
        .ok_or_else(|| format!("`{text}` does not start with `{prefix}`"))
}

fn split_once<'a>(text: &'a str, separator: &str) -> Result<(&'a str, &'a str), String> {
    text.split_once(separator)
        .ok_or_else(|| format!("`{text}`: `{separator}` expected"))
}
