//! Reads a YAML policy file into a positioned [`Node`] tree (native builds only).

use super::tree::{Key, Node, Pos, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML syntax error or a construct the policy format does not accept.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

fn pos_of(mark: &Marker) -> Pos {
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Key, Node)>, Option<Key>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    error: Option<YamlError>,
}

impl Builder {
    fn fail(&mut self, pos: Pos, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError { pos, message });
        }
    }

    /// Places a finished node into the enclosing sequence or mapping.
    fn push(&mut self, node: Node) {
        let mut failure = None;
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => match node.value {
                    Value::Str(name) => {
                        let key = Key {
                            name,
                            pos: node.pos,
                        };
                        if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                            let first_line = first.pos.map(|p| p.line).unwrap_or(0);
                            failure = Some((
                                node.pos,
                                format!(
                                    "duplicate key '{}' (first at line {first_line})",
                                    key.name
                                ),
                            ));
                        }
                        *pending = Some(key);
                    }
                    Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Null => {
                        failure = Some((
                            node.pos,
                            format!("mapping keys must be strings, found {}", node.value.kind()),
                        ));
                        *pending = Some(Key {
                            name: String::new(),
                            pos: node.pos,
                        });
                    }
                    Value::Seq(_) | Value::Map(_) => {
                        failure = Some((node.pos, "mapping keys must be strings".to_string()));
                        *pending = Some(Key {
                            name: String::new(),
                            pos: node.pos,
                        });
                    }
                },
                Some(key) => entries.push((key, node)),
            },
        }
        if let Some((pos, message)) = failure {
            self.fail(pos.unwrap_or(Pos { line: 1, column: 1 }), message);
        }
    }
}

fn scalar(text: String, style: TScalarStyle, pos: Pos) -> Node {
    let value = if style != TScalarStyle::Plain {
        Value::Str(text)
    } else {
        match text.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => Value::Null,
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            _ => plain_number(&text).unwrap_or(Value::Str(text)),
        }
    };
    Node::new(value, Some(pos))
}

fn plain_number(text: &str) -> Option<Value> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Too large for i64: keep the text (see the module doc).
        return text.parse::<i64>().ok().map(Value::Int);
    }
    let looks_float = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().filter(|b| b.is_ascii_digit()).count() > 0;
    match text.parse::<f64>() {
        Ok(f) if looks_float && f.is_finite() => Some(Value::Float(f)),
        _ => None,
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = pos_of(&mark);
        match ev {
            Event::Alias(_) => self.fail(pos, "aliases (*name) are not allowed in a policy".into()),
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor != 0 =>
            {
                self.fail(pos, "anchors (&name) are not allowed in a policy".into())
            }
            Event::Scalar(text, style, _, _) => self.push(scalar(text, style, pos)),
            Event::SequenceStart(_, _) => self.stack.push(Frame::Seq(pos, Vec::new())),
            Event::MappingStart(_, _) => self.stack.push(Frame::Map(pos, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(start, items)) => Node::new(Value::Seq(items), Some(start)),
                    Some(Frame::Map(start, entries, _)) => {
                        // The parser marks a block mapping's start after its first key
                        // (a flow mapping's at its `{`): the earlier of the two is what a
                        // reader expects.
                        let first_key = entries.first().and_then(|(k, _)| k.pos);
                        let pos = first_key
                            .filter(|k| (k.line, k.column) < (start.line, start.column))
                            .unwrap_or(start);
                        Node::new(Value::Map(entries), Some(pos))
                    }
                    None => return,
                };
                self.push(node);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Parses one YAML document. An empty file is an empty mapping's absence: `Null`.
///
/// Scalars follow the YAML 1.2 core schema: plain `true`/`false`, `null`/`~`/empty,
/// integers and floats are typed; quoted scalars are strings, and so is an integer too
/// large for i64 (a SHA-256 of digits only must not become a float). Refused: anchors
/// and aliases (they make "where did this value come from" ambiguous in errors) and
/// duplicate keys (parsers disagree on which wins, so a reviewer could read the other).
pub fn parse(source: &str) -> Result<Node, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(YamlError {
            pos: pos_of(e.marker()),
            message: format!("invalid YAML: {}", e.info()),
        });
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    let mut docs = builder.documents.into_iter();
    let first = docs.next();
    if let Some(second) = docs.next() {
        return Err(YamlError {
            pos: second.pos.unwrap_or(Pos { line: 1, column: 1 }),
            message: "a policy file holds one YAML document, found a second".into(),
        });
    }
    Ok(first.unwrap_or(Node::new(Value::Null, Some(Pos { line: 1, column: 1 }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_get<'a>(node: &'a Node, name: &str) -> &'a Node {
        match &node.value {
            Value::Map(entries) => &entries.iter().find(|(k, _)| k.name == name).unwrap().1,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn scalars_are_typed_by_the_core_schema() {
        let n = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: hello\ng: 2025-01-01T00:00:00Z\n")
            .unwrap();
        assert_eq!(map_get(&n, "a").value, Value::Int(1));
        assert_eq!(map_get(&n, "b").value, Value::Str("1".into()));
        assert_eq!(map_get(&n, "c").value, Value::Bool(true));
        assert_eq!(map_get(&n, "d").value, Value::Null);
        assert_eq!(map_get(&n, "e").value, Value::Float(1.5));
        assert_eq!(map_get(&n, "f").value, Value::Str("hello".into()));
        assert_eq!(
            map_get(&n, "g").value,
            Value::Str("2025-01-01T00:00:00Z".into())
        );
    }

    #[test]
    fn positions_are_one_based_line_and_column() {
        let n = parse("a:\n  b: x\n").unwrap();
        let b = map_get(map_get(&n, "a"), "b");
        assert_eq!(b.pos, Some(Pos { line: 2, column: 6 }));
    }

    #[test]
    fn an_all_digit_value_too_large_for_i64_stays_a_string() {
        let digits = "1".repeat(64);
        let n = parse(&format!("h: {digits}\n")).unwrap();
        assert_eq!(map_get(&n, "h").value, Value::Str(digits));
    }

    #[test]
    fn duplicate_keys_are_refused_with_the_second_position() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos.line, 3);
        assert!(err.message.contains("duplicate key 'a'"), "{}", err.message);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
        assert!(err.pos.line >= 1);
    }

    #[test]
    fn aliases_are_refused() {
        let err = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert!(err.message.contains("anchors"), "{}", err.message);
    }

    #[test]
    fn json_round_trip_keeps_the_tree() {
        let n = parse("a: [1, x, {b: true}]\n").unwrap();
        let json = serde_json::to_vec(&n.to_json()).unwrap();
        let back = Node::from_json(&json).unwrap();
        assert_eq!(back.to_json(), n.to_json());
    }
}
