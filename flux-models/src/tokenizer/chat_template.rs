//! Chat templates: the Jinja templates of HF `tokenizer_config.json` / GGUF metadata, rendered
//! with minijinja the way transformers renders them with jinja2 (trim_blocks, lstrip_blocks,
//! Python string methods, `raise_exception`, `strftime_now`, a `tojson` like Python's
//! `json.dumps`).

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::{ModelError, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Template instructions a render may run: a fixed budget plus some per message. The templates of
/// Llama 3, SmolLM2 and ChatML take 15 to 25 per message (and some 50 more); minijinja caps one
/// `range` at 100000 items but not loops in loops, nor a macro calling itself twice, so a template
/// from a file could otherwise run for hours, or build strings of gigabytes through macro results.
const FUEL_BASE: u64 = 200_000;
const FUEL_PER_MESSAGE: u64 = 5_000;

/// Bytes a render may write: a fixed budget plus 8 per byte of the messages (a template repeats
/// each message a few times at most); `'x' * 99999999` in a loop would otherwise fill memory.
const OUTPUT_BASE: usize = 64 << 20;

/// Values nested deeper than this, or with more parts than [`MAX_VALUE_PARTS`], are refused
/// when written out (`{{ }}`, `tojson`): a namespace assigned into itself (`{% set ns.n = ns %}`)
/// is a cycle that minijinja's printing follows until the stack overflows.
const MAX_VALUE_DEPTH: usize = 64;
const MAX_VALUE_PARTS: usize = 1_000_000;

/// Checks that `value` is not nested deeper than [`MAX_VALUE_DEPTH`] (which a cycle is), visiting
/// at most `budget` parts.
fn check_nesting(
    value: &Value,
    depth: usize,
    budget: &mut usize,
) -> std::result::Result<(), Error> {
    use minijinja::value::ValueKind;
    let kind = value.kind();
    if !matches!(kind, ValueKind::Seq | ValueKind::Map) {
        return Ok(());
    }
    let refuse = |what: String| Err(Error::new(ErrorKind::InvalidOperation, what));
    if depth >= MAX_VALUE_DEPTH {
        return refuse(format!(
            "a value nested more than {MAX_VALUE_DEPTH} levels deep (a namespace that holds itself?)"
        ));
    }
    for item in value.try_iter()? {
        if *budget == 0 {
            return refuse(format!("a value of more than {MAX_VALUE_PARTS} parts"));
        }
        *budget -= 1;
        let item = if kind == ValueKind::Map {
            value.get_item(&item)?
        } else {
            item
        };
        check_nesting(&item, depth + 1, budget)?;
    }
    Ok(())
}

/// The widest `tojson` indent accepted: the indent string is allocated as given (found by
/// fuzzing: `tojson(indent=99999999999999992)` asked for 10^17 bytes and aborted).
const MAX_INDENT: usize = 64;

/// A `Vec` that refuses to grow past `limit` bytes.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `template` for `messages`.
pub(super) fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let fuel = FUEL_BASE + FUEL_PER_MESSAGE * messages.len() as u64;
    let mut env = Environment::new();
    env.set_fuel(Some(fuel));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| {
        strftime(&format, now_utc())
    });
    env.add_filter("tojson", tojson);
    env.set_formatter(|out, state, value| {
        check_nesting(value, 0, &mut MAX_VALUE_PARTS.clone())?;
        minijinja::escape_formatter(out, state, value)
    });
    let limit = OUTPUT_BASE
        + 8 * messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum::<usize>();
    let to_err = |e: Error| {
        // raise_exception's message alone; other errors with their line in the template.
        let message = match e.kind() {
            ErrorKind::InvalidOperation if e.detail().is_some() => {
                e.detail().unwrap_or_default().to_string()
            }
            ErrorKind::OutOfFuel => format!(
                "the template runs more than {fuel} instructions for {} messages (a loop without bound?)",
                messages.len()
            ),
            // The one-line form, with the template line: minijinja's `{e:#}` adds a source
            // excerpt whose drawing panics (usize underflow) on some spans (found by fuzzing).
            _ => e.to_string(),
        };
        ModelError::ChatTemplate { message }
    };
    env.add_template("chat_template", template)
        .map_err(to_err)?;
    let tmpl = env.get_template("chat_template").map_err(to_err)?;
    let mut out = Capped {
        out: Vec::new(),
        limit,
        exceeded: false,
    };
    let rendered = tmpl.render_captured_to(
        minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
            tools => Value::from(()),
        },
        &mut out,
    );
    if out.exceeded {
        return Err(ModelError::ChatTemplate {
            message: format!(
                "the template writes more than {limit} bytes for {} messages (a loop without bound?)",
                messages.len()
            ),
        });
    }
    rendered.map_err(to_err)?;
    String::from_utf8(out.out).map_err(|e| ModelError::ChatTemplate {
        message: format!("the output is not UTF-8: {e}"),
    })
}

/// `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=...)`, as transformers' own
/// `tojson` (minijinja's escapes `<>&'` for HTML and drops the spaces after `,` and `:`).
fn tojson(
    value: &Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<String, Error> {
    let indent = match indent {
        Some(n) => Some(n),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    if let Some(n) = indent.filter(|&n| n > MAX_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent {n} is more than {MAX_INDENT}"),
        ));
    }
    check_nesting(value, 0, &mut MAX_VALUE_PARTS.clone())?;
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let fail =
        |e: serde_json::Error| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}"));
    let mut out = Vec::new();
    if sort_keys {
        let sorted = Sorted::from(serde_json::to_value(value).map_err(fail)?);
        write_json(&mut out, &sorted, indent).map_err(fail)?;
    } else {
        write_json(&mut out, value, indent).map_err(fail)?;
    }
    String::from_utf8(out).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

fn write_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
    indent: Option<usize>,
) -> serde_json::Result<()> {
    match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            value.serialize(&mut serde_json::Serializer::with_formatter(out, formatter))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            out,
            PythonFormatter,
        )),
    }
}

/// A JSON value whose maps serialise in key order (whatever serde_json's map type keeps).
#[derive(Serialize)]
#[serde(untagged)]
enum Sorted {
    Map(std::collections::BTreeMap<String, Sorted>),
    List(Vec<Sorted>),
    Leaf(serde_json::Value),
}

impl From<serde_json::Value> for Sorted {
    fn from(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Object(m) => {
                Sorted::Map(m.into_iter().map(|(k, v)| (k, v.into())).collect())
            }
            serde_json::Value::Array(a) => Sorted::List(a.into_iter().map(Sorted::from).collect()),
            leaf => Sorted::Leaf(leaf),
        }
    }
}

/// Python's default separators: `", "` and `": "`.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// A UTC time broken down: (year, month 1-12, day 1-31, hour, minute, second, weekday 0=Monday).
type DateTime = (i64, u32, u32, u32, u32, u32, u32);

fn now_utc() -> DateTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    civil(secs)
}

/// Calendar date and time of a Unix timestamp (Howard Hinnant's `civil_from_days`).
fn civil(secs: i64) -> DateTime {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday (3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as u32;
    (
        year,
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        weekday,
    )
}

/// Python's `strftime` for the common directives (the ones chat templates use for dates).
fn strftime(format: &str, (year, month, day, hour, minute, second, weekday): DateTime) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let month_name = MONTHS[(month as usize + 11) % 12];
    let day_name = DAYS[weekday as usize % 7];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(day_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", " Hi "),
        ]
    }

    #[test]
    fn renders_chatml_with_python_methods() {
        let t = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = render(t, &msgs(), true, "", "").unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}";
        let err = render(t, &msgs(), false, "", "").unwrap_err();
        assert!(matches!(err, ModelError::ChatTemplate { .. }));
        assert_eq!(
            err.to_string(),
            "chat template: first message must be from the user"
        );
        let err = render("{% for %}", &msgs(), false, "", "").unwrap_err();
        assert!(err.to_string().starts_with("chat template: "), "{err}");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        // (minijinja keeps map keys sorted unless built with `preserve_order`, so the literal's
        // keys are already in order here.)
        let t = r#"{{ {"a": none, "b": [1, 2.5, "<a & 'é'>"]} | tojson }}|{{ [1, {"k": true}] | tojson(indent=2) }}|{{ {"b": 1, "a": 2} | tojson(sort_keys=true) }}"#;
        let out = render(t, &[], false, "", "").unwrap();
        assert_eq!(
            out,
            "{\"a\": null, \"b\": [1, 2.5, \"<a & 'é'>\"]}|[\n  1,\n  {\n    \"k\": true\n  }\n]|{\"a\": 2, \"b\": 1}"
        );
    }

    #[test]
    fn strftime_formats_python_directives() {
        // 2024-07-23 13:05:09 UTC was a Tuesday.
        let t = civil(1_721_739_909);
        assert_eq!(t, (2024, 7, 23, 13, 5, 9, 1));
        assert_eq!(strftime("%d %b %Y", t), "23 Jul 2024");
        assert_eq!(
            strftime("%A, %B %e %H:%M:%S %p %% %q", t),
            "Tuesday, July 23 13:05:09 PM % %q"
        );
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0, 3));
        assert_eq!(strftime_now_len(), 11);
    }

    fn strftime_now_len() -> usize {
        strftime("%d %b %Y", now_utc()).len()
    }

    // Found by review while fuzzing (fuzz/, target `chat_template`): minijinja caps one `range`
    // at 100000 items but not loops in loops, nor the output of a loop.
    #[test]
    fn templates_without_bound_stop_with_an_error() {
        let nested =
            "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}";
        let err = render(nested, &msgs(), false, "", "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("instructions for 2 messages (a loop without bound?)"),
            "{err}"
        );
        // Found by fuzzing (fuzz/, target `chat_template`, a libFuzzer timeout): a macro calling
        // itself twice doubles its output per level; with the first budget (5M instructions) it
        // took 1 s and 500 MB here, over 10 s under AddressSanitizer.
        let doubling = "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}\
                        xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                        {% endmacro %}{{ f(56) }}";
        let err = render(doubling, &msgs(), false, "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs more than 210000 instructions"), "{err}");
        let big = "{% for a in range(99999) %}{{ 'x' * 9999999 }}{% endfor %}";
        let err = render(big, &msgs(), false, "", "").unwrap_err().to_string();
        assert!(
            err.contains("bytes for 2 messages (a loop without bound?)"),
            "{err}"
        );
    }

    // Found by fuzzing (fuzz/, target `chat_template`): `{e:#}` of this error drew a source
    // excerpt with `end_col - start_col` < 0 (a panic with overflow checks, a huge `repeat`
    // without). Errors are now minijinja's one-line form.
    #[test]
    fn template_errors_are_one_line_and_never_panic() {
        let t =
            "{% for in messages %}{{ message['role'] }}\n{{ message['con\x7fant'] }}{% endfor %}";
        let err = render(t, &msgs(), false, "", "").unwrap_err().to_string();
        assert_eq!(
            err,
            "chat template: cannot unpack: sequence of wrong length (expected 0, got 2) (in chat_template:1)"
        );
    }

    // Found by fuzzing (fuzz/, target `chat_template`): a namespace assigned into itself is a
    // cycle; writing it out, `~` and `|string` recursed until the stack overflowed (an abort,
    // not an error), and the cycle leaked. The vendored minijinja refuses the assignment.
    #[test]
    fn a_namespace_that_would_hold_itself_is_refused_at_the_assignment() {
        for t in [
            "{% set ns = namespace(n=0) %}{% set ns.n = ns %}{{ ns.n }}",
            "{% set ns = namespace(n=0) %}{% set ns.n = [ns, ns] %}{{ ns }}",
            "{% set ns = namespace(n=0) %}{% set ns.n = ns %}{{ ns | tojson }}",
            "{% set ns = namespace(n=0) %}{% set ns.n = ns %}{{ ns ~ '' }}",
            "{% set ns = namespace(n=0) %}{% set ns.n = {'a': [1, ns]} %}{{ ns | string }}",
            // Through another namespace, and through an alias.
            "{% set a = namespace() %}{% set b = namespace(x=a) %}{% set a.y = b %}{{ a ~ '' }}",
            "{% set ns = namespace() %}{% set m = ns %}{% set ns.self = [m] %}{{ ns | string }}",
        ] {
            let err = render(t, &msgs(), false, "", "").unwrap_err().to_string();
            assert!(err.contains("a namespace cannot hold itself"), "{t}: {err}");
        }
        // A chain grown in a loop is refused once it is deeper than printing may recurse.
        let deep = "{% set ns = namespace(n=none) %}{% for i in range(100) %}\
                    {% set ns.n = namespace(n=ns.n) %}{% endfor %}{{ ns ~ '' }}";
        let err = render(deep, &msgs(), false, "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nested more than 64 levels deep"), "{err}");
        // What templates do with namespaces still works: flags, accumulated strings and lists,
        // one namespace inside another.
        let ok = render(
            "{% set ns = namespace(found=false, text='', items=[]) %}{% set inner = namespace(v=1) %}\
             {% for m in messages %}{% set ns.text = ns.text ~ m.role %}\
             {% set ns.items = ns.items + [m.role] %}{% set ns.found = true %}{% endfor %}\
             {% set ns.inner = inner %}{% set inner.v = 2 %}\
             {{ ns.found }} {{ ns.text }} {{ ns.items | tojson }} {{ ns.inner.v }}",
            &msgs(),
            false,
            "",
            "",
        )
        .unwrap();
        assert_eq!(ok, r#"True systemuser ["system", "user"] 2"#);
        // Ordinary nesting is written as before.
        let ok = render(
            "{{ [[1, [2]], {'a': [3]}] | tojson }}",
            &msgs(),
            false,
            "",
            "",
        )
        .unwrap();
        assert_eq!(ok, r#"[[1, [2]], {"a": [3]}]"#);
    }

    // Found by fuzzing (fuzz/, target `chat_template`, libFuzzer: allocation-size-too-big).
    #[test]
    fn a_huge_tojson_indent_is_an_error_not_an_abort() {
        let t = "{{ messages | tojson(indent=99999999999999992) }}";
        let err = render(t, &msgs(), false, "", "").unwrap_err().to_string();
        assert!(
            err.contains("tojson: indent 99999999999999992 is more than 64"),
            "{err}"
        );
        let ok = render("{{ [1] | tojson(indent=64) }}", &msgs(), false, "", "").unwrap();
        assert_eq!(ok, format!("[\n{}1\n]", " ".repeat(64)));
    }

    #[test]
    fn missing_variables_are_undefined_not_errors() {
        let t = "{% if enable_thinking is defined and enable_thinking is false %}x{% endif %}{% if tools %}t{% endif %}{{ messages[::-1][0].content }}";
        assert_eq!(render(t, &msgs(), false, "", "").unwrap(), " Hi ");
    }
}
