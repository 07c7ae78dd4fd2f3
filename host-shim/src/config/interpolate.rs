//! Environment variables in configuration text, as Vector interpolates them: the text is
//! rewritten before it is parsed, so a variable can stand anywhere a value can.
//!
//! - `${NAME}`: the variable's value; an error when it is not set.
//! - `${NAME:-default}`: `default` when the variable is unset or empty; `${NAME-default}`: only
//!   when it is unset.
//! - `${NAME:?message}` / `${NAME?message}`: an error saying `message` when the variable is
//!   unset or empty / unset.
//! - `$$`: a literal `$`. Any other `$` is left as it is (unlike Vector, a bare `$NAME` is not
//!   interpolated: detector settings may hold regular expressions).
//!
//! Lines that are comments (first non-blank character `#`) are left alone. A value holding a
//! line break is refused: it could add keys the file does not show.

/// Rewrites `text`, reading variables through `var`; on failure, every problem as
/// `line N: ${NAME}: what is wrong`.
pub(crate) fn interpolate(
    text: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') || !line.contains('$') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some((inside, tail)) = after
                .strip_prefix('{')
                .and_then(|body| body.split_once('}'))
            {
                match expand(inside, &var) {
                    Ok(value) => out.push_str(&value),
                    Err(message) => {
                        problems.push(format!("line {}: ${{{inside}}}: {message}", index + 1));
                    }
                }
                rest = tail;
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The value of one `${...}` body.
fn expand(inside: &str, var: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let name_end = inside
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inside.len());
    let (name, operator) = inside.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(
            "not a variable name (letters, digits and `_`, not starting with a digit; \
                    write `$$` for a literal `$`)"
                .to_owned(),
        );
    }
    let value = var(name);
    let empty = value.as_deref().is_none_or(str::is_empty);
    let result = if operator.is_empty() {
        value.ok_or_else(|| {
            "environment variable not set (give a default with `${NAME:-default}`)".to_owned()
        })
    } else if let Some(default) = operator.strip_prefix(":-") {
        Ok(if empty {
            default.to_owned()
        } else {
            value.unwrap_or_default()
        })
    } else if let Some(default) = operator.strip_prefix('-') {
        Ok(value.unwrap_or_else(|| default.to_owned()))
    } else if let Some(message) = operator.strip_prefix(":?") {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| message.to_owned())
    } else if let Some(message) = operator.strip_prefix('?') {
        value.ok_or_else(|| message.to_owned())
    } else {
        Err(format!(
            "unknown form `{operator}` (use `:-`, `-`, `:?` or `?`)"
        ))
    }?;
    if result.contains(['\n', '\r']) {
        return Err("the value holds a line break, which could add configuration keys".to_owned());
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("9000".to_owned()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nmetrics: {}".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn variables_defaults_and_escapes() {
        let text = "address: 127.0.0.1:${PORT}\n\
                    a: ${UNSET:-x} ${EMPTY:-y} ${EMPTY-z} ${UNSET-w}\n\
                    price: $$5 $ alone, regex ^a$\n\
                    # ${NOT_INTERPOLATED} in a comment\n";
        assert_eq!(
            interpolate(text, env).unwrap(),
            "address: 127.0.0.1:9000\n\
             a: x y  w\n\
             price: $5 $ alone, regex ^a$\n\
             # ${NOT_INTERPOLATED} in a comment\n"
        );
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let text = "a: ${PORT}\nb: ${MISSING}\nc: ${EMPTY:?say something}\nd: ${MULTI}\ne: ${1X}\n";
        let problems = interpolate(text, env).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("line 2: ${MISSING}: environment variable not set"));
        assert_eq!(
            problems[1],
            "line 3: ${EMPTY:?say something}: say something"
        );
        assert!(problems[2].starts_with("line 4: ${MULTI}: the value holds a line break"));
        assert!(problems[3].starts_with("line 5: ${1X}: not a variable name"));
    }
}
