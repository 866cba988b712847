//! Whose a named volume is. Docker knows one volume per name on a host, so `data:/data` would
//! be the same volume for every task that names it: one task could read or replace another's
//! files. Unless the worker allows shared volumes, a task's volume is its own: the name Docker
//! is given carries the task's id, or for a copy of a service the service's name (its copies on
//! one host share it, and a new version finds its data, as with Docker Swarm's services).
//! A volume outlives its task, as Docker's do; `docker volume ls --filter name=cube-` lists
//! them.

use cube_shared::Task;

/// The name Docker is given for the task's volume `name`. Scoped, it is
/// `cube-task_<task id>_<name>` or `cube-service_<service>_<name>`: neither a task id nor a
/// service name has a `_`, so no two scopes share a name, and no name a task writes can reach
/// another's.
pub fn volume_name(task: &Task, name: &str, shared: bool) -> String {
    if shared {
        return name.to_string();
    }
    match &task.service {
        Some(service) => format!("cube-service_{service}_{name}"),
        None => format!("cube-task_{}_{name}", task.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_its_task_s_or_its_service_s() {
        let mut a = Task::new("busybox");
        let b = Task::new("busybox");
        let (va, vb) = (
            volume_name(&a, "data", false),
            volume_name(&b, "data", false),
        );
        assert_eq!(va, format!("cube-task_{}_data", a.id));
        assert_ne!(va, vb, "two tasks never share one");
        // Naming another's volume does not reach it: the name is scoped again.
        assert_ne!(volume_name(&b, &va, false), va);
        assert_eq!(volume_name(&a, "data", true), "data", "shared when allowed");

        a.service = Some("web".into());
        let mut c = Task::new("busybox");
        c.service = Some("web".into());
        assert_eq!(volume_name(&a, "data", false), "cube-service_web_data");
        assert_eq!(volume_name(&c, "data", false), "cube-service_web_data");
        // A service `web-data` with a volume `x` is not the service `web` with `data-x`.
        c.service = Some("web-data".into());
        assert_ne!(
            volume_name(&c, "x", false),
            volume_name(&a, "data-x", false)
        );
    }
}
