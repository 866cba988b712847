//! `cube service deploy`'s desired state: read from a service file (`-f`, JSON or TOML) whose
//! fields the flags override, or from the flags alone; checked as the manager will check it.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use cube_shared::service::{spec_from_json, ServiceSpec};
use cube_shared::task_with_optional_id;
use cube_shared::units::format_duration;
use serde_json::{Map, Value};

use super::DeployArgs;
use crate::cmd::task_spec::read_file;

/// How a service file is written, by its extension (`-` is JSON on standard input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Toml,
}

fn format_of(path: &Path) -> Result<Format> {
    if path.as_os_str() == "-" {
        return Ok(Format::Json);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("json") => Ok(Format::Json),
        Some(e) if e.eq_ignore_ascii_case("toml") => Ok(Format::Toml),
        other => bail!(
            "{}: unknown service file extension {} — name it .json or .toml (or give `-` for JSON on standard input)",
            path.display(),
            other.map_or("(none)".to_string(), |e| format!("`.{e}`"))
        ),
    }
}

/// A service file's text as the JSON object it stands for.
fn parse(text: &str, format: Format) -> Result<Value, String> {
    let value: Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?,
        Format::Toml => toml::from_str(text).map_err(|e| format!("not TOML: {e}"))?,
    };
    if !value.is_object() {
        return Err(
            "a service file holds one object (name, kind, count, template, update, …)".into(),
        );
    }
    Ok(value)
}

/// The desired state `-f` and the flags describe.
pub(super) fn build_spec(args: &DeployArgs) -> Result<ServiceSpec> {
    let (mut value, source) = match &args.file {
        Some(path) => {
            let format = format_of(path)?;
            let text = read_file(path)?;
            let value = parse(&text, format).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            (value, path.display().to_string())
        }
        None => (Value::Object(Map::new()), "the flags".to_string()),
    };
    override_fields(&mut value, args).with_context(|| format!("reading {source}"))?;
    spec_from_json(value).map_err(|e| anyhow!("invalid service ({source}): {e}"))
}

/// Sets the fields the flags give, in the JSON object (before it is read and checked).
fn override_fields(value: &mut Value, args: &DeployArgs) -> Result<()> {
    let spec = value.as_object_mut().expect("checked: an object");
    if let Some(name) = &args.name {
        spec.insert("name".into(), name.clone().into());
    }
    if let Some(kind) = args.kind {
        spec.insert("kind".into(), kind.as_str().into());
    }
    if let Some(count) = args.count {
        spec.insert("count".into(), count.into());
    }
    if let Some(n) = args.max_failures {
        spec.insert("max_failures".into(), n.into());
    }
    let mut update: Vec<(&str, Value)> = Vec::new();
    if let Some(n) = args.max_parallel {
        update.push(("max_parallel", n.into()));
    }
    if let Some(d) = args.min_healthy_time {
        update.push(("min_healthy_time", format_duration(d).into()));
    }
    if let Some(d) = args.healthy_deadline {
        update.push(("healthy_deadline", format_duration(d).into()));
    }
    if args.no_auto_revert {
        update.push(("auto_revert", false.into()));
    }
    if let Some(n) = args.canary {
        update.push(("canary", n.into()));
    }
    if !update.is_empty() {
        let policy = spec
            .entry("update")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(policy) = policy.as_object_mut() else {
            bail!("update: expected an object");
        };
        for (k, v) in update {
            policy.insert(k.into(), v);
        }
    }
    let file_has_template = spec.contains_key("template");
    if args.task.any() || !file_has_template {
        // The template as a task (its id left to Cube), the flags applied, and back.
        let template = spec
            .remove("template")
            .unwrap_or_else(|| Value::Object(Map::new()));
        let had_id = template.get("id").is_some();
        let mut task = task_with_optional_id(template).map_err(|e| anyhow!("template: {e}"))?;
        args.task.apply(&mut task)?;
        let mut template = serde_json::to_value(&task)?;
        if !had_id {
            template.as_object_mut().map(|t| t.remove("id"));
        }
        spec.insert("template".into(), template);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cube_shared::service::ServiceKind;

    #[test]
    fn extensions_choose_the_format() {
        assert_eq!(format_of(Path::new("web.toml")).unwrap(), Format::Toml);
        assert_eq!(format_of(Path::new("a/web.JSON")).unwrap(), Format::Json);
        assert_eq!(format_of(Path::new("-")).unwrap(), Format::Json);
        let e = format_of(Path::new("web.yaml")).unwrap_err().to_string();
        assert!(e.contains("`.yaml`") && e.contains(".json or .toml"), "{e}");
        let e = format_of(Path::new("web")).unwrap_err().to_string();
        assert!(e.contains("(none)"), "{e}");
    }

    #[test]
    fn toml_and_json_read_alike() {
        let toml = r#"
            name = "web"
            count = 3
            [template]
            image = "busybox"
            cmd = ["sleep", "300"]
            memory = 67108864
            [update]
            max_parallel = 2
            min_healthy_time = "5s"
        "#;
        let json = r#"{"name": "web", "count": 3,
            "template": {"image": "busybox", "cmd": ["sleep", "300"], "memory": 67108864},
            "update": {"max_parallel": 2, "min_healthy_time": "5s"}}"#;
        let a = spec_from_json(parse(toml, Format::Toml).unwrap()).unwrap();
        let b = spec_from_json(parse(json, Format::Json).unwrap()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.kind, ServiceKind::Service);
        assert_eq!(
            a.update.min_healthy_time(),
            std::time::Duration::from_secs(5)
        );
        assert!(parse("name = ", Format::Toml)
            .unwrap_err()
            .starts_with("not TOML"));
        assert!(parse("[1]", Format::Json)
            .unwrap_err()
            .contains("one object"));
        // What is wrong with a file says where.
        let bad = parse(
            "name = \"web\"\ncolour = 1\n[template]\nimage = \"b\"\n",
            Format::Toml,
        );
        let e = spec_from_json(bad.unwrap()).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }
}
