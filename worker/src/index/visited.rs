//! Which node kinds each language's definition rules (`extract`) look at, as a table per
//! grammar indexed by node kind id.

use tree_sitter::Node;

use super::record::Language;

/// Per node kind id of one grammar: whether the language's rules look at nodes of that kind.
/// Most nodes of a tree are tokens and expressions no rule names; the walk skips them with one
/// array lookup instead of comparing their kind's name against every rule.
pub(super) struct Visited(Vec<bool>);

impl Visited {
    pub(super) fn new(grammar: &tree_sitter::Language, kinds: &[&str]) -> Visited {
        // By name over every id: a grammar may alias several ids to one name.
        let count = grammar.node_kind_count();
        Visited(
            (0..count)
                .map(|id| {
                    u16::try_from(id)
                        .ok()
                        .and_then(|id| grammar.node_kind_for_id(id))
                        .is_some_and(|name| kinds.contains(&name))
                })
                .collect(),
        )
    }

    pub(super) fn get(&self, node: Node) -> bool {
        self.0.get(usize::from(node.kind_id())).copied().unwrap_or(true)
    }
}

/// The node kinds each language's rules (below) match on; a kind missing here is never seen
/// by its rule.
pub(super) fn visited_kinds(language: Language) -> &'static [&'static str] {
    match language {
        Language::Rust => &[
            "function_item",
            "function_signature_item",
            "impl_item",
            "trait_item",
            "struct_item",
            "enum_item",
            "union_item",
            "type_item",
            "associated_type",
            "const_item",
            "static_item",
            "mod_item",
        ],
        Language::Python => &[
            "function_definition",
            "class_definition",
            "type_alias_statement",
            "expression_statement",
        ],
        Language::Go => &[
            "function_declaration",
            "method_declaration",
            "type_spec",
            "type_alias",
            "method_elem",
            "const_spec",
        ],
        Language::JavaScript | Language::TypeScript | Language::Tsx => &[
            "function_declaration",
            "generator_function_declaration",
            "function_signature",
            "class_declaration",
            "abstract_class_declaration",
            "class",
            "method_definition",
            "method_signature",
            "abstract_method_signature",
            "interface_declaration",
            "type_alias_declaration",
            "enum_declaration",
            "internal_module",
            "module",
            "variable_declarator",
        ],
        Language::Java => &[
            "class_declaration",
            "record_declaration",
            "interface_declaration",
            "annotation_type_declaration",
            "enum_declaration",
            "method_declaration",
            "constructor_declaration",
            "compact_constructor_declaration",
            "field_declaration",
            "constant_declaration",
        ],
        _ => &[],
    }
}
