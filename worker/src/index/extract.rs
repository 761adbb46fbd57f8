//! Parsing with tree-sitter and the per-language definition rules.
//!
//! One iterative walk over the syntax tree (no recursion, so a deeply nested file cannot blow
//! the stack) keeps a stack of enclosing definitions; each language's `visit` looks at one node,
//! emits its definitions and says whether the node opens a scope for what it contains.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use tree_sitter::{Node, ParseOptions, Parser, Point};

use super::record::{Kind, Language, Symbol};
use super::visited::{Visited, visited_kinds};

/// Longest name kept, in bytes; a longer "name" is not one (skipped).
const MAX_NAME_BYTES: usize = 1024;

/// What parsing one file gave.
#[derive(Debug)]
pub enum Parsed {
    /// The definitions, in tree (source) order. A tree with syntax errors still counts: what
    /// parsed around the errors is extracted.
    Symbols(Vec<Symbol>),
    /// No tree: the grammar could not be loaded, the parse ran past its time budget, or the
    /// extraction failed.
    Failed,
    /// `cancel()` said stop during the parse.
    Cancelled,
}

/// One `tree_sitter::Parser` per language, created on first use and reused for every file,
/// with the language's [`Visited`] table.
#[derive(Default)]
pub struct Parsers {
    /// `None`: the grammar failed to load once; it is not tried again.
    parsers: HashMap<Language, Option<(Parser, Visited)>>,
}

fn grammar(language: Language) -> Option<tree_sitter::Language> {
    Some(match language {
        Language::Rust => tree_sitter_rust::LANGUAGE.into(),
        Language::Python => tree_sitter_python::LANGUAGE.into(),
        Language::Go => tree_sitter_go::LANGUAGE.into(),
        Language::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
        Language::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
        Language::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
        Language::Java => tree_sitter_java::LANGUAGE.into(),
        _ => return None,
    })
}

impl Parsers {
    fn parser(&mut self, language: Language) -> Option<&mut (Parser, Visited)> {
        self.parsers
            .entry(language)
            .or_insert_with(|| {
                let grammar = grammar(language)?;
                let mut parser = Parser::new();
                parser.set_language(&grammar).ok()?;
                Some((parser, Visited::new(&grammar, visited_kinds(language))))
            })
            .as_mut()
    }

    /// Parses `content` and extracts its definitions. `timeout` bounds the parse (not the
    /// walk, which is linear in the tree); `cancel` is polled from tree-sitter's progress
    /// callback, so a huge file does not delay a cancellation.
    pub fn parse(
        &mut self,
        language: Language,
        content: &[u8],
        timeout: Option<Duration>,
        cancel: &dyn Fn() -> bool,
    ) -> Parsed {
        let Some((parser, visited)) = self.parser(language) else {
            return Parsed::Failed;
        };
        let started = Instant::now();
        let mut cancelled = false;
        let mut progress = |_: &tree_sitter::ParseState| {
            if cancel() {
                cancelled = true;
                return ControlFlow::Break(());
            }
            match timeout {
                Some(limit) if started.elapsed() > limit => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        };
        let len = content.len();
        let mut input = |offset: usize, _: Point| &content[offset.min(len)..];
        let tree = parser.parse_with_options(
            &mut input,
            None,
            Some(ParseOptions::new().progress_callback(&mut progress)),
        );
        let Some(tree) = tree else {
            // A halted parse would otherwise be resumed by the next call.
            parser.reset();
            return if cancelled {
                Parsed::Cancelled
            } else {
                Parsed::Failed
            };
        };
        match catch_unwind(AssertUnwindSafe(|| {
            walk(language, tree.root_node(), content, visited)
        })) {
            Ok(symbols) => Parsed::Symbols(symbols),
            Err(_) => Parsed::Failed,
        }
    }
}

/// What kind of definition encloses a node: decides method versus function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopeKind {
    /// A Rust `impl` block (named after its type).
    Impl,
    Trait,
    Class,
    Interface,
    Module,
    Function,
    /// Any other definition (a type, a constant): still the `enclosing` of what is inside.
    Other,
}

struct Scope {
    name: String,
    kind: ScopeKind,
    /// Depth of the node that opened it; it closes when the walk leaves that node.
    depth: usize,
}

struct Walk<'a> {
    src: &'a [u8],
    scopes: Vec<Scope>,
    out: Vec<Symbol>,
}

type Opens = Option<(String, ScopeKind)>;

impl<'a> Walk<'a> {
    fn top(&self) -> Option<ScopeKind> {
        self.scopes.last().map(|s| s.kind)
    }

    fn text(&self, node: Node) -> Option<String> {
        let bytes = self.src.get(node.byte_range())?;
        if bytes.len() > MAX_NAME_BYTES {
            return None;
        }
        let text = String::from_utf8_lossy(bytes);
        let mut text = text.trim();
        if node.kind() == "string" {
            // `declare module "x"`, `'quoted'() {}`: the name without its quotes.
            text = text.trim_matches(['"', '\'', '`']);
        }
        (!text.is_empty()).then(|| text.to_string())
    }

    fn push(&mut self, name: String, at: Node, kind: Kind, enclosing: Option<String>) {
        let p = at.start_position();
        self.out.push(Symbol {
            name,
            kind,
            line: u32::try_from(p.row).unwrap_or(u32::MAX - 1) + 1,
            column: u32::try_from(p.column).unwrap_or(u32::MAX - 1) + 1,
            enclosing,
        });
    }

    /// Emits the definition named by `name_node`, enclosed by the innermost scope.
    fn emit(&mut self, name_node: Node, kind: Kind) -> Option<String> {
        let name = self.text(name_node)?;
        let enclosing = self.scopes.last().map(|s| s.name.clone());
        self.push(name.clone(), name_node, kind, enclosing);
        Some(name)
    }

    /// [`Walk::emit`] of the node's `name` field, opening a scope of `scope` kind.
    fn define(&mut self, node: Node, kind: Kind, scope: ScopeKind) -> Opens {
        let name = self.emit(node.child_by_field_name("name")?, kind)?;
        Some((name, scope))
    }
}

fn walk(language: Language, root: Node, src: &[u8], visited: &Visited) -> Vec<Symbol> {
    let visit: fn(&mut Walk, Node, usize) -> Opens = match language {
        Language::Rust => rust,
        Language::Python => python,
        Language::Go => go,
        Language::JavaScript | Language::TypeScript | Language::Tsx => javascript,
        Language::Java => java,
        _ => return Vec::new(),
    };
    let mut w = Walk {
        src,
        scopes: Vec::new(),
        out: Vec::new(),
    };
    let mut cursor = root.walk();
    let mut depth = 0usize;
    loop {
        let node = cursor.node();
        while w.scopes.last().is_some_and(|s| s.depth >= depth) {
            w.scopes.pop();
        }
        if visited.get(node)
            && let Some((name, kind)) = visit(&mut w, node, depth)
        {
            w.scopes.push(Scope { name, kind, depth });
        }
        if cursor.goto_first_child() {
            depth += 1;
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return w.out;
            }
            depth -= 1;
        }
    }
}

/// The base name of a type used as an impl target or a Go receiver: `Foo` of `Foo<T>`,
/// `a::Foo`, `&mut Foo`, `*Foo`, `pkg.Foo`; other shapes (tuples, slices) by their text.
fn type_name(w: &Walk, mut node: Node) -> Option<String> {
    loop {
        let next = match node.kind() {
            "generic_type" | "reference_type" | "pointer_type" | "parenthesized_type" => node
                .child_by_field_name("type")
                .or_else(|| node.named_child(node.named_child_count().saturating_sub(1) as u32)),
            "scoped_type_identifier" | "qualified_type" => node.child_by_field_name("name"),
            _ => None,
        };
        match next {
            Some(inner) => node = inner,
            None => return w.text(node),
        }
    }
}

fn rust(w: &mut Walk, node: Node, _depth: usize) -> Opens {
    match node.kind() {
        "function_item" | "function_signature_item" => {
            let kind = match w.top() {
                Some(ScopeKind::Impl | ScopeKind::Trait) => Kind::Method,
                _ => Kind::Function,
            };
            w.define(node, kind, ScopeKind::Function)
        }
        "impl_item" => {
            let name = type_name(w, node.child_by_field_name("type")?)?;
            Some((name, ScopeKind::Impl))
        }
        "trait_item" => w.define(node, Kind::Trait, ScopeKind::Trait),
        "struct_item" | "enum_item" | "union_item" | "type_item" | "associated_type" => {
            w.define(node, Kind::Type, ScopeKind::Other)
        }
        "const_item" | "static_item" => w.define(node, Kind::Constant, ScopeKind::Other),
        "mod_item" => w.define(node, Kind::Module, ScopeKind::Module),
        _ => None,
    }
}

/// `UPPER_CASE` (with digits and underscores, at least one letter): Python's constants.
fn upper_case(name: &str) -> bool {
    name.bytes().any(|b| b.is_ascii_uppercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn python(w: &mut Walk, node: Node, depth: usize) -> Opens {
    match node.kind() {
        "function_definition" => {
            let kind = match w.top() {
                Some(ScopeKind::Class) => Kind::Method,
                _ => Kind::Function,
            };
            w.define(node, kind, ScopeKind::Function)
        }
        "class_definition" => w.define(node, Kind::Class, ScopeKind::Class),
        "type_alias_statement" => {
            let left = node.child_by_field_name("left")?;
            let name = if left.kind() == "identifier" {
                left
            } else {
                left.named_child(0).filter(|n| n.kind() == "identifier")?
            };
            w.emit(name, Kind::Type);
            None
        }
        // Module level: `module` is depth 0, its statements depth 1.
        "expression_statement" if depth == 1 => {
            let mut assignment = node.named_child(0).filter(|n| n.kind() == "assignment");
            while let Some(a) = assignment {
                let right = a.child_by_field_name("right");
                if let Some(left) = a.child_by_field_name("left")
                    && left.kind() == "identifier"
                    && right.is_some()
                    && w.text(left).is_some_and(|t| upper_case(&t))
                {
                    w.emit(left, Kind::Constant);
                }
                // `A = B = 1`: the right side is itself an assignment.
                assignment = right.filter(|n| n.kind() == "assignment");
            }
            None
        }
        _ => None,
    }
}

fn go(w: &mut Walk, node: Node, _depth: usize) -> Opens {
    match node.kind() {
        "function_declaration" => w.define(node, Kind::Function, ScopeKind::Function),
        "method_declaration" => {
            let receiver = node
                .child_by_field_name("receiver")
                .and_then(|list| {
                    let mut cursor = list.walk();
                    list.named_children(&mut cursor)
                        .find(|n| n.kind() == "parameter_declaration")
                })
                .and_then(|p| p.child_by_field_name("type"))
                .and_then(|t| type_name(w, t));
            let name_node = node.child_by_field_name("name")?;
            let name = w.text(name_node)?;
            w.push(name.clone(), name_node, Kind::Method, receiver);
            Some((name, ScopeKind::Function))
        }
        "type_spec" | "type_alias" => {
            let interface = node
                .child_by_field_name("type")
                .is_some_and(|t| t.kind() == "interface_type");
            if interface && node.kind() == "type_spec" {
                w.define(node, Kind::Interface, ScopeKind::Interface)
            } else {
                w.define(node, Kind::Type, ScopeKind::Other)
            }
        }
        "method_elem" if w.top() == Some(ScopeKind::Interface) => {
            w.define(node, Kind::Method, ScopeKind::Function)
        }
        "const_spec" => {
            let mut cursor = node.walk();
            let names: Vec<Node> = node.children_by_field_name("name", &mut cursor).collect();
            for name in names.into_iter().filter(|n| n.kind() == "identifier") {
                w.emit(name, Kind::Constant);
            }
            None
        }
        _ => None,
    }
}

/// Whether a JS/TS `lexical_declaration` is a statement of a module body: the program, or a
/// TypeScript namespace's block, through an `export` or `declare`.
fn module_level(decl: Node) -> bool {
    let mut parent = decl.parent();
    while let Some(p) = parent
        && matches!(p.kind(), "export_statement" | "ambient_declaration")
    {
        parent = p.parent();
    }
    match parent {
        Some(p) if p.kind() == "program" => true,
        Some(p) if p.kind() == "statement_block" => p
            .parent()
            .is_some_and(|m| matches!(m.kind(), "internal_module" | "module")),
        _ => false,
    }
}

fn const_declaration(decl: Node) -> bool {
    decl.kind() == "lexical_declaration"
        && decl
            .child_by_field_name("kind")
            .is_some_and(|k| k.kind() == "const")
}

/// The names a destructuring pattern binds, in source order: identifiers and shorthand
/// properties, not keys (`b` of `{b: c}`) nor defaults (`d` of `[x = d]`).
fn pattern_names(pattern: Node) -> Vec<Node> {
    let mut names = Vec::new();
    let mut stack = vec![pattern];
    while let Some(node) = stack.pop() {
        match node.kind() {
            "identifier" | "shorthand_property_identifier_pattern" => names.push(node),
            "assignment_pattern" | "object_assignment_pattern" => {
                stack.extend(node.child_by_field_name("left"));
            }
            "pair_pattern" => stack.extend(node.child_by_field_name("value")),
            "array_pattern" | "object_pattern" | "rest_pattern" => {
                let mut cursor = node.walk();
                let children: Vec<Node> = node.named_children(&mut cursor).collect();
                stack.extend(children.into_iter().rev());
            }
            _ => {}
        }
    }
    names
}

/// JavaScript, TypeScript and TSX (one set of rules: the TypeScript node kinds never occur in
/// a JavaScript tree).
fn javascript(w: &mut Walk, node: Node, _depth: usize) -> Opens {
    match node.kind() {
        "function_declaration" | "generator_function_declaration" | "function_signature" => {
            w.define(node, Kind::Function, ScopeKind::Function)
        }
        "class_declaration" | "abstract_class_declaration" => {
            w.define(node, Kind::Class, ScopeKind::Class)
        }
        // A class expression with its own name (`x = class Foo {}`); under a declarator the
        // declarator's name was emitted already.
        "class" if node.is_named() => {
            if node
                .parent()
                .is_some_and(|p| p.kind() == "variable_declarator")
            {
                return None;
            }
            w.define(node, Kind::Class, ScopeKind::Class)
        }
        "method_definition" if node.parent().is_some_and(|p| p.kind() == "class_body") => {
            let name = node.child_by_field_name("name")?;
            if name.kind() == "computed_property_name" {
                return None;
            }
            w.define(node, Kind::Method, ScopeKind::Function)
        }
        "method_signature" | "abstract_method_signature"
            if matches!(w.top(), Some(ScopeKind::Class | ScopeKind::Interface)) =>
        {
            let name = node.child_by_field_name("name")?;
            if name.kind() == "computed_property_name" {
                return None;
            }
            w.define(node, Kind::Method, ScopeKind::Function)
        }
        "interface_declaration" => w.define(node, Kind::Interface, ScopeKind::Interface),
        "type_alias_declaration" | "enum_declaration" => {
            w.define(node, Kind::Type, ScopeKind::Other)
        }
        "internal_module" | "module" if node.is_named() => {
            w.define(node, Kind::Module, ScopeKind::Module)
        }
        "variable_declarator" => {
            let name = node.child_by_field_name("name")?;
            if matches!(name.kind(), "array_pattern" | "object_pattern") {
                // `const [a, b] = …`, `const {a, b: c} = …` at module level: constants.
                let decl = node.parent()?;
                if const_declaration(decl) && module_level(decl) {
                    for bound in pattern_names(name) {
                        w.emit(bound, Kind::Constant);
                    }
                }
                return None;
            }
            if name.kind() != "identifier" {
                return None;
            }
            let value = node.child_by_field_name("value");
            match value.map(|v| v.kind()) {
                Some(
                    "arrow_function" | "function_expression" | "function" | "generator_function",
                ) => {
                    let name = w.emit(name, Kind::Function)?;
                    Some((name, ScopeKind::Function))
                }
                Some("class") => {
                    let name = w.emit(name, Kind::Class)?;
                    Some((name, ScopeKind::Class))
                }
                _ => {
                    let decl = node.parent()?;
                    if const_declaration(decl) && module_level(decl) {
                        let name = w.emit(name, Kind::Constant)?;
                        return Some((name, ScopeKind::Other));
                    }
                    None
                }
            }
        }
        _ => None,
    }
}

fn java_static_final(node: Node) -> bool {
    let mut cursor = node.walk();
    let Some(modifiers) = node.children(&mut cursor).find(|c| c.kind() == "modifiers") else {
        return false;
    };
    let mut cursor = modifiers.walk();
    let kinds: Vec<&str> = modifiers.children(&mut cursor).map(|c| c.kind()).collect();
    kinds.contains(&"static") && kinds.contains(&"final")
}

fn java(w: &mut Walk, node: Node, _depth: usize) -> Opens {
    match node.kind() {
        "class_declaration" | "record_declaration" => w.define(node, Kind::Class, ScopeKind::Class),
        "interface_declaration" | "annotation_type_declaration" => {
            w.define(node, Kind::Interface, ScopeKind::Interface)
        }
        "enum_declaration" => w.define(node, Kind::Type, ScopeKind::Class),
        "method_declaration" | "constructor_declaration" | "compact_constructor_declaration" => {
            w.define(node, Kind::Method, ScopeKind::Function)
        }
        "field_declaration" | "constant_declaration" => {
            // Interface fields (`constant_declaration`) are implicitly `static final`.
            if node.kind() == "field_declaration" && !java_static_final(node) {
                return None;
            }
            let mut cursor = node.walk();
            let names: Vec<Node> = node
                .children_by_field_name("declarator", &mut cursor)
                .filter_map(|d| d.child_by_field_name("name"))
                .collect();
            for name in names {
                w.emit(name, Kind::Constant);
            }
            None
        }
        _ => None,
    }
}
