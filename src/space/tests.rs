use super::published::REGISTRY;
use super::*;

fn all_published() -> Vec<(&'static str, Genotype)> {
    PUBLISHED
        .iter()
        .map(|&name| (name, published(name).unwrap_or_else(|| panic!("{name} missing"))))
        .collect()
}

fn cnas() -> Genotype {
    published("CNAS").unwrap()
}

/// A valid two-node cell to break in the validation tests.
fn small() -> Cell {
    Cell {
        edges: vec![
            Edge::new(Primitive::SepConv3x3, 0, 2),
            Edge::new(Primitive::SkipConnect, 1, 2),
            Edge::new(Primitive::SepConv3x3, 0, 3),
            Edge::new(Primitive::MaxPool3x3, 2, 3),
        ],
        concat: vec![2, 3],
    }
}

fn invalid(cell: &Cell) -> String {
    match cell.validate("normal", None) {
        Err(SpaceError::Invalid(msg)) => msg,
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn primitive_names_parse_and_serialize() {
    for p in Primitive::ALL {
        assert_eq!(p.name().parse::<Primitive>().unwrap(), p);
        assert_eq!(serde_json::to_value(p).unwrap(), Value::String(p.name().into()));
        let back: Primitive = serde_json::from_str(&format!("\"{}\"", p.name())).unwrap();
        assert_eq!(back, p);
    }
    assert_eq!(" Sep_Conv_3x3 ".parse::<Primitive>().unwrap(), Primitive::SepConv3x3);
    let e = "sep_conv_9x9".parse::<Primitive>().unwrap_err().to_string();
    assert!(e.contains("unknown operation 'sep_conv_9x9'"), "{e}");
    assert!(e.contains("sep_conv_3x3") && e.contains("conv_1x3_3x1"), "{e}");
    assert!(!e.contains('\n'));
    let e = serde_json::from_str::<Primitive>("\"conv_9\"").unwrap_err().to_string();
    assert!(e.contains("unknown operation 'conv_9'"), "{e}");
    for (i, p) in Primitive::DARTS.iter().enumerate() {
        assert_eq!(p.darts_index(), Some(i));
        assert_eq!(Primitive::from_darts_index(i), Some(*p));
    }
    assert_eq!(Primitive::SepConv7x7.darts_index(), None);
    assert_eq!(Primitive::from_darts_index(8), None);
}

#[test]
fn published_genotypes_validate_with_expected_nodes() {
    let expected = [
        ("CNAS", 4),
        ("DARTS_V1", 4),
        ("DARTS_V2", 4),
        ("ENAS", 5),
        ("NASNet", 5),
        ("AmoebaNet", 5),
        ("PC_DARTS", 4),
        ("PDARTS", 4),
    ];
    assert_eq!(PUBLISHED.len(), expected.len());
    assert_eq!(REGISTRY.len(), PUBLISHED.len());
    for (entry, name) in REGISTRY.iter().zip(PUBLISHED) {
        assert_eq!(entry.name, *name);
    }
    for (name, nodes) in expected {
        let g = published(name).unwrap();
        g.validate(None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(g.normal.num_nodes(), nodes, "{name} normal");
        assert_eq!(g.reduce.num_nodes(), nodes, "{name} reduce");
        assert!(g.normal.is_darts_ordered() && g.reduce.is_darts_ordered(), "{name}");
    }
    for name in ["CNAS", "DARTS_V1", "DARTS_V2", "PC_DARTS", "PDARTS", "ENAS"] {
        published(name).unwrap().validate(Some(&Primitive::DARTS)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let nasnet = published("NASNet").unwrap();
    assert_eq!(nasnet.normal.concat, vec![2, 3, 4, 5, 6]);
    assert_eq!(nasnet.reduce.concat, vec![4, 5, 6]);
    assert!(nasnet.uses(Primitive::SepConv7x7));
    let amoeba = published("AmoebaNet").unwrap();
    assert_eq!(amoeba.normal.concat, vec![4, 5, 6]);
    assert_eq!(amoeba.reduce.concat, vec![3, 4, 6]);
    assert!(amoeba.reduce.uses(Primitive::Conv7x1_1x7));
    assert!(!amoeba.normal.uses(Primitive::Conv7x1_1x7));
    assert_eq!(published("ENAS").unwrap().reduce.concat, vec![2, 3, 6]);
}

#[test]
fn cnas_matches_the_paper() {
    use Primitive as P;
    let g = cnas();
    let e = |op, from, to| Edge::new(op, from, to);
    assert_eq!(
        g.normal.edges,
        vec![
            e(P::DilConv3x3, 1, 2),
            e(P::SepConv3x3, 0, 2),
            e(P::SepConv3x3, 0, 3),
            e(P::SkipConnect, 1, 3),
            e(P::SepConv3x3, 1, 4),
            e(P::MaxPool3x3, 3, 4),
            e(P::SepConv3x3, 2, 5),
            e(P::SepConv3x3, 4, 5),
        ]
    );
    assert_eq!(
        g.reduce.edges,
        vec![
            e(P::SepConv3x3, 0, 2),
            e(P::SkipConnect, 1, 2),
            e(P::DilConv5x5, 2, 3),
            e(P::SkipConnect, 1, 3),
            e(P::DilConv3x3, 2, 4),
            e(P::SepConv3x3, 1, 4),
            e(P::SepConv5x5, 0, 5),
            e(P::SepConv3x3, 3, 5),
        ]
    );
    assert_eq!(g.normal.concat, vec![2, 3, 4, 5]);
    assert_eq!(g.reduce.concat, vec![2, 3, 4, 5]);
}

#[test]
fn darts_v2_matches_the_reference_text() {
    // As printed in the DARTS repository's cnn/genotypes.py.
    let text = "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";
    assert_eq!(Genotype::from_darts_str(text).unwrap(), published("DARTS_V2").unwrap());
}

#[test]
fn aliases_and_lookup() {
    let v2 = published("DARTS_V2").unwrap();
    assert_eq!(published("darts_v2"), Some(v2.clone()));
    assert_eq!(published("DARTS-V2"), Some(v2.clone()));
    assert_eq!(published("DARTS"), Some(v2.clone()));
    assert_eq!(published(" dartsv2 "), Some(v2));
    assert_ne!(published("DARTS_V1"), published("DARTS_V2"));
    assert_eq!(published("NASNet-A"), published("NASNet"));
    assert_eq!(published("nasnet_a"), published("NASNet"));
    assert_eq!(published("AmoebaNet-A"), published("AmoebaNet"));
    assert_eq!(published("PC-DARTS"), published("PC_DARTS"));
    assert_eq!(published("pc_darts_cifar"), published("PC_DARTS"));
    assert_eq!(published("P-DARTS"), published("PDARTS"));
    assert_eq!(published("cnas"), Some(cnas()));
    assert_eq!(published("enas"), published("ENAS"));
    assert_eq!(published("GDAS"), None);
    assert_eq!(published(""), None);
}

#[test]
fn json_named_round_trip() {
    for (name, g) in all_published() {
        let v = g.to_json();
        assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name}");
        assert_eq!(Genotype::from_json_value(&v).unwrap(), g, "{name}");
        let pretty = g.to_json_pretty();
        assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap(), v, "{name}");
        assert_eq!(Genotype::from_json_str(&pretty).unwrap(), g, "{name}");
        assert_eq!(Genotype::parse_any(&pretty).unwrap(), g, "{name}");
    }
    let v = cnas().to_json();
    assert_eq!(v["normal"]["edges"][0], json!(["dil_conv_3x3", 1, 2]));
    assert_eq!(v["reduce"]["concat"], json!([2, 3, 4, 5]));
}

#[test]
fn json_serde_embeds_in_other_structs() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Checkpoint {
        epoch: u32,
        genotype: Genotype,
    }
    let c = Checkpoint { epoch: 3, genotype: cnas() };
    let text = serde_json::to_string(&c).unwrap();
    assert!(text.contains(r#""edges":[["dil_conv_3x3",1,2],"#), "{text}");
    assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), c);
    let bad = text.replace(r#"["dil_conv_3x3",1,2]"#, r#"["dil_conv_3x3",2,2]"#);
    let e = serde_json::from_str::<Checkpoint>(&bad).unwrap_err().to_string();
    assert!(e.contains("from must be smaller than to"), "{e}");
}

#[test]
fn json_ordinal_round_trip() {
    for (name, g) in all_published() {
        let darts_only = !Primitive::ALL[8..].iter().any(|&p| g.uses(p));
        match g.to_json_ordinal() {
            Ok(v) => {
                assert!(darts_only, "{name}");
                assert!(v["normal"]["edges"][0][0].is_u64(), "{name}");
                assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name}");
            }
            Err(e) => {
                assert!(!darts_only, "{name}");
                assert!(e.to_string().contains("not in the DARTS operation set"), "{e}");
            }
        }
    }
    let v = cnas().to_json_ordinal().unwrap();
    assert_eq!(v["normal"]["edges"][0], json!([6, 1, 2]));
    let e = published("NASNet").unwrap().to_json_ordinal().unwrap_err().to_string();
    assert!(e.starts_with("reduce cell, edge 1 (sep_conv_7x7, 0 -> 2):"), "{e}");

    // With a "primitives" list, indices point into it: every genotype round-trips.
    for (name, g) in all_published() {
        let table: Vec<&str> = Primitive::ALL.iter().rev().map(|p| p.name()).collect();
        let cell = |c: &Cell| {
            let edges: Vec<Value> = c
                .edges
                .iter()
                .map(|e| {
                    let k = table.iter().position(|n| *n == e.op.name()).unwrap();
                    json!([k, e.from, e.to])
                })
                .collect();
            json!({"edges": edges, "concat": c.concat})
        };
        let v = json!({"name": name, "source": "test", "primitives": table,
                           "normal": cell(&g.normal), "reduce": cell(&g.reduce)});
        assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name}");
    }
}

#[test]
fn json_darts_layout_and_edge_objects_round_trip() {
    for (name, g) in all_published() {
        let pairs =
            |c: &Cell| -> Vec<Value> { c.edges.iter().map(|e| json!([e.op.name(), e.from])).collect() };
        let v = json!({
            "name": name,
            "normal": pairs(&g.normal), "normal_concat": g.normal.concat,
            "reduce": pairs(&g.reduce), "reduce_concat": g.reduce.concat,
        });
        assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name} DARTS");

        let objects = |c: &Cell| -> Value {
            let edges: Vec<Value> =
                c.edges.iter().map(|e| json!({"op": e.op.name(), "from": e.from, "to": e.to})).collect();
            json!({"edges": edges, "concat": c.concat})
        };
        let v = json!({"normal": objects(&g.normal), "reduce": objects(&g.reduce)});
        assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name} objects");
    }
    // DARTS layout with ordinal ops.
    let text = r#"{"normal": [[6, 1], [0, 0], [0, 0], [5, 1], [0, 1], [2, 3], [0, 2], [0, 4]],
                       "normal_concat": [2, 3, 4, 5],
                       "reduce": [[0, 0], [5, 1], [7, 2], [5, 1], [6, 2], [0, 1], [1, 0], [0, 3]],
                       "reduce_concat": [2, 3, 4, 5]}"#;
    assert_eq!(Genotype::from_json_str(text).unwrap(), cnas());
}

#[test]
fn json_edge_order_is_kept() {
    let mut g = cnas();
    g.normal.edges.swap(0, 7);
    g.normal.edges.swap(2, 5);
    assert_eq!(Genotype::from_json_str(&g.to_json().to_string()).unwrap(), g);
    assert_eq!(Genotype::from_json_str(&g.to_json_ordinal().unwrap().to_string()).unwrap(), g);
}

#[test]
fn json_malformed() {
    let e = Genotype::from_json_str("{\"normal\": {\"edges\": [}").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("invalid genotype JSON: "), "{msg}");
    assert!(msg.contains("line 1 column"), "{msg}");
    assert!(!msg.contains('\n'));

    let e = Genotype::from_json_str("{\n  \"normal\": 3,\n").unwrap_err().to_string();
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn json_structural_errors() {
    let mut v = cnas().to_json();
    v["extra"] = json!(1);
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("unknown top-level key \"extra\""), "{e}");

    let e = Genotype::from_json_str(r#"{"normal": {"edges": [], "concat": []}}"#).unwrap_err().to_string();
    assert!(e.contains("missing \"reduce\" cell"), "{e}");

    let mut v = cnas().to_json();
    v["normal"]["edges"][3] = json!(["skip_connect", 1]);
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("normal cell, edge 3: expected [op, from, to]"), "{e}");

    let mut v = cnas().to_json();
    v["reduce"]["edges"][2] = json!(["dil_conv_9x9", 2, 3]);
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("reduce cell, edge 2: unknown operation 'dil_conv_9x9'"), "{e}");

    let mut v = cnas().to_json();
    v["reduce"]["edges"][2] = json!([8, 2, 3]);
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("operation index 8 is out of range (0..8 in the DARTS order"), "{e}");

    let mut v = cnas().to_json();
    v["normal"]["edges"][1] = json!(["sep_conv_3x3", -1, 2]);
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("\"from\" must be a non-negative integer"), "{e}");

    let mut v = cnas().to_json();
    v["normal"]["edges"][1] = json!({"op": "sep_conv_3x3", "from": 0});
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("normal cell, edge 1: missing \"to\""), "{e}");

    let mut v = cnas().to_json();
    v["normal_concat"] = json!([2, 3, 4, 5]);
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("\"normal_concat\" belongs to the DARTS layout"), "{e}");

    let v = json!({"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]],
                       "reduce": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]],
                       "reduce_concat": [2]});
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("missing \"normal_concat\""), "{e}");

    // Structure is validated after reading.
    let mut v = cnas().to_json();
    v["normal"]["concat"] = json!([2, 3, 4, 6]);
    let e = Genotype::from_json_value(&v).unwrap_err().to_string();
    assert!(e.contains("normal cell: concat names node 6, which does not exist"), "{e}");
}

#[test]
fn darts_text_round_trip() {
    for (name, g) in all_published() {
        let text = g.to_darts_string();
        assert!(text.starts_with("Genotype(normal=[('"), "{text}");
        assert_eq!(Genotype::from_darts_str(&text).unwrap(), g, "{name}: {text}");
        assert_eq!(Genotype::parse_any(&text).unwrap(), g, "{name}");
    }
    let text = published("DARTS_V1").unwrap().to_darts_string();
    assert_eq!(
        text,
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), \
             ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), \
             ('skip_connect', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), \
             ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), \
             ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], \
             reduce_concat=range(2, 6))"
    );
    assert!(published("AmoebaNet").unwrap().to_darts_string().ends_with("reduce_concat=[3, 4, 6])"));
}

#[test]
fn darts_text_is_tolerant() {
    let text = r#"
            genotype = genotypes.Genotype(
              normal = [
                ("dil_conv_3x3", 1), ("sep_conv_3x3", 0),   # node 2
                ('sep_conv_3x3', 0), ('skip_connect', 1),
                ('sep_conv_3x3', 1), ('max_pool_3x3', 3),
                ('sep_conv_3x3', 2), ('sep_conv_3x3', 4),
              ],
              normal_concat = range(2, 6),
              reduce = (
                (('sep_conv_3x3', 0), ('skip_connect', 1)),
                (('dil_conv_5x5', 2), ('skip_connect', 1)),
                (('dil_conv_3x3', 2), ('sep_conv_3x3', 1)),
                (('sep_conv_5x5', 0), ('sep_conv_3x3', 3)),
              ),
              reduce_concat = [2, 3, 4, 5],
            )
        "#;
    assert_eq!(Genotype::from_darts_str(text).unwrap(), cnas());
    assert_eq!(Genotype::parse_any(text).unwrap(), cnas());

    // Positional fields, as namedtuple allows.
    let g = published("PDARTS").unwrap();
    let text = g
        .to_darts_string()
        .replace("normal=", "")
        .replace("normal_concat=", "")
        .replace("reduce=", "")
        .replace("reduce_concat=", "");
    assert_eq!(Genotype::from_darts_str(&text).unwrap(), g);
}

#[test]
fn darts_text_writes_unordered_cells_sensibly() {
    // Out of node order but well formed: written node by node (the same network).
    let mut g = cnas();
    g.normal.edges.swap(0, 7);
    let back = Genotype::from_darts_str(&g.to_darts_string()).unwrap();
    assert_eq!(back.normal.edges, g.normal.edges_by_node());
    assert_eq!(back.reduce, g.reduce);
    // Not expressible as DARTS pairs at all: written as (op, from, to) triples.
    let mut odd = cnas();
    odd.normal.edges[6].to = 3;
    let text = odd.to_darts_string();
    assert!(text.contains("normal=[('dil_conv_3x3', 1, 2), "), "{text}");
    assert!(text.contains("('sep_conv_3x3', 2, 3)"), "{text}");
    let e = Genotype::from_darts_str(&text).unwrap_err().to_string();
    assert!(e.contains("normal cell: node 3 has 3 incoming edges"), "{e}");
}

#[test]
fn darts_text_errors() {
    let e = Genotype::from_darts_str("Genotype(normal=[('sep_conv_3x3', 0)").unwrap_err();
    assert!(e.to_string().starts_with("invalid DARTS genotype text: "), "{e}");
    let e =
        Genotype::from_darts_str("Genotype(normal=[], normal_concat=[], reduce=[])").unwrap_err().to_string();
    assert!(e.contains("missing reduce_concat"), "{e}");
    let e = Genotype::from_darts_str("Genotype(normal=[('sep_conv_3x3', 0)],\n  nomal_concat=[2])")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2, column 3: unknown field 'nomal_concat'"), "{e}");
    let text = cnas().to_darts_string().replace("'max_pool_3x3'", "'max_pool_9x9'");
    let e = Genotype::from_darts_str(&text).unwrap_err().to_string();
    assert!(e.contains("normal, edge 5: unknown operation 'max_pool_9x9'"), "{e}");
    let e = Genotype::from_darts_str("Genotype(normal=[('sep_conv_3x3, 0)])").unwrap_err().to_string();
    assert!(e.contains("unterminated string"), "{e}");
    let e = Genotype::parse_any("   ").unwrap_err().to_string();
    assert!(e.contains("empty genotype description"), "{e}");
}

#[test]
fn display_is_readable() {
    let text = cnas().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        "normal: (dil_conv_3x3, 1, 2) (sep_conv_3x3, 0, 2) (sep_conv_3x3, 0, 3) \
             (skip_connect, 1, 3) (sep_conv_3x3, 1, 4) (max_pool_3x3, 3, 4) (sep_conv_3x3, 2, 5) \
             (sep_conv_3x3, 4, 5) concat [2, 3, 4, 5]"
    );
    assert!(lines[1].starts_with("reduce: (sep_conv_3x3, 0, 2) (skip_connect, 1, 2)"));
    assert!(lines[1].ends_with("concat [2, 3, 4, 5]"));
}

#[test]
fn validate_empty_cell() {
    let c = Cell { edges: vec![], concat: vec![2] };
    assert_eq!(invalid(&c), "normal cell has no edges");
}

#[test]
fn validate_odd_edge_count() {
    let mut c = small();
    c.edges.pop();
    assert!(invalid(&c).contains("normal cell has 3 edges, an odd number"));
}

#[test]
fn validate_edge_into_input_node() {
    let mut c = small();
    c.edges[1] = Edge::new(Primitive::SkipConnect, 0, 1);
    let msg = invalid(&c);
    assert!(msg.starts_with("normal cell, edge 1 (skip_connect, 0 -> 1): to names input node 1"), "{msg}");
}

#[test]
fn validate_from_not_smaller_than_to() {
    let mut c = small();
    c.edges[3] = Edge::new(Primitive::SepConv3x3, 4, 3);
    assert_eq!(invalid(&c), "normal cell, edge 3 (sep_conv_3x3, 4 -> 3): from must be smaller than to");
    c.edges[3] = Edge::new(Primitive::SepConv3x3, 3, 3);
    assert!(invalid(&c).contains("from must be smaller than to"));
}

#[test]
fn validate_to_beyond_last_node() {
    let mut c = small();
    c.edges[3] = Edge::new(Primitive::SepConv3x3, 2, 4);
    let msg = invalid(&c);
    assert!(msg.contains("edge 3 (sep_conv_3x3, 2 -> 4): to is beyond the cell's last node 3"), "{msg}");
}

#[test]
fn validate_node_without_two_inputs() {
    let mut c = small();
    c.edges[1] = Edge::new(Primitive::SkipConnect, 1, 3);
    let msg = invalid(&c);
    assert_eq!(msg, "normal cell: node 2 has 1 incoming edge, expected exactly 2");
}

#[test]
fn validate_concat_empty() {
    let mut c = small();
    c.concat.clear();
    assert_eq!(invalid(&c), "normal cell: concat is empty");
}

#[test]
fn validate_concat_duplicate() {
    let mut c = small();
    c.concat = vec![2, 3, 2];
    assert_eq!(invalid(&c), "normal cell: concat lists node 2 more than once");
}

#[test]
fn validate_concat_missing_node() {
    let mut c = small();
    c.concat = vec![2, 7];
    assert!(invalid(&c).contains("concat names node 7, which does not exist"));
}

#[test]
fn validate_concat_input_node() {
    let mut c = small();
    c.concat = vec![0, 2, 3];
    assert!(invalid(&c).contains("concat names input node 0"));
}

#[test]
fn validate_allowed_set() {
    let nasnet = published("NASNet").unwrap();
    nasnet.validate(None).unwrap();
    let e = nasnet.validate(Some(&Primitive::DARTS)).unwrap_err().to_string();
    assert!(
        e.starts_with("reduce cell, edge 1 (sep_conv_7x7, 0 -> 2): operation sep_conv_7x7 is not allowed"),
        "{e}"
    );
    assert!(e.contains("allowed: sep_conv_3x3, sep_conv_5x5"), "{e}");
    let only = [Primitive::SepConv3x3, Primitive::SkipConnect];
    let e = cnas().validate(Some(&only)).unwrap_err().to_string();
    assert_eq!(
            e,
            "normal cell, edge 0 (dil_conv_3x3, 1 -> 2): operation dil_conv_3x3 is not allowed (allowed: sep_conv_3x3, skip_connect)"
        );
}

#[test]
fn validate_names_the_cell() {
    let mut g = cnas();
    g.reduce.concat.push(9);
    let e = g.validate(None).unwrap_err().to_string();
    assert!(e.starts_with("reduce cell: concat names node 9"), "{e}");
}

#[test]
fn messages_are_single_lines() {
    let mut cells = vec![small(); 6];
    cells[0].edges.clear();
    cells[1].edges.pop();
    cells[2].edges[0].to = 0;
    cells[3].edges[0].from = 5;
    cells[4].concat = vec![];
    cells[5].edges[0].to = 3;
    for c in &cells {
        assert!(!invalid(c).contains('\n'));
    }
}
