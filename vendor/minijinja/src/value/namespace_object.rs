use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind};
use crate::value::{Enumerator, Object, Value, ValueKind};

/// This object exists for the `namespace` function.
///
/// It's special in that it behaves like a dictionary in many ways but it's the only
/// object that can be used with `{% set %}` assignments.  This is used internally
/// in the vm via downcasting.
#[derive(Debug, Default)]
pub(crate) struct Namespace {
    data: Mutex<BTreeMap<Arc<str>, Value>>,
}

impl Object for Namespace {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.data.lock().unwrap().get(some!(key.as_str())).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let data = self.data.lock().unwrap();
        let keys = data.keys().cloned().map(Value::from);
        Enumerator::Values(keys.collect())
    }
}

/// flux patch: deepest value a namespace attribute may hold (printing it recurses once per level).
const MAX_ASSIGNED_DEPTH: usize = 64;
/// flux patch: most parts of a value walked by one assignment check.
const MAX_ASSIGNED_PARTS: usize = 1_000_000;

impl Namespace {
    pub(crate) fn set_value(&self, key: &str, value: Value) {
        self.data.lock().unwrap().insert(key.into(), value);
    }

    /// flux patch: refuses a `value` that holds this namespace (assigning it would close a
    /// reference cycle: a leak, and a stack overflow for whatever prints it) or that is nested
    /// deeper than [`MAX_ASSIGNED_DEPTH`]. Namespaces are the only values templates can mutate,
    /// so every cycle is closed by such an assignment.
    pub(crate) fn check_assignment(&self, value: &Value) -> Result<(), Error> {
        let mut budget = MAX_ASSIGNED_PARTS;
        self.check_part(value, 0, &mut budget)
    }

    fn check_part(&self, value: &Value, depth: usize, budget: &mut usize) -> Result<(), Error> {
        let refuse = |what: String| Err(Error::new(ErrorKind::InvalidOperation, what));
        if *budget == 0 {
            return refuse(format!(
                "cannot assign to a namespace a value of more than {MAX_ASSIGNED_PARTS} parts"
            ));
        }
        *budget -= 1;
        let parts: Vec<Value> = if let Some(ns) = value.downcast_object_ref::<Namespace>() {
            if std::ptr::eq(ns, self) {
                return refuse("a namespace cannot hold itself".into());
            }
            // Copied out so that no lock is held while the parts are walked.
            let data = ns.data.lock().unwrap();
            data.values().cloned().collect()
        } else {
            match value.kind() {
                // A value that cannot be walked cannot hold anything assigned either.
                ValueKind::Seq => match value.try_iter() {
                    Ok(items) => items.collect(),
                    Err(_) => return Ok(()),
                },
                ValueKind::Map => match value.try_iter() {
                    Ok(keys) => keys.filter_map(|key| value.get_item(&key).ok()).collect(),
                    Err(_) => return Ok(()),
                },
                _ => return Ok(()),
            }
        };
        if !parts.is_empty() && depth >= MAX_ASSIGNED_DEPTH {
            return refuse(format!(
                "cannot assign to a namespace a value nested more than {MAX_ASSIGNED_DEPTH} levels deep"
            ));
        }
        for part in &parts {
            self.check_part(part, depth + 1, budget)?;
        }
        Ok(())
    }
}
