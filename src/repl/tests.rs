//! Tests of the prompt's completion.

use super::*;

fn helper() -> KdHelper {
    KdHelper {
        engine: Rc::new(RefCell::new(None)),
        names: RefCell::new(HashMap::new()),
    }
}

#[test]
fn completes_commands_and_extensions() {
    let h = helper();
    let (start, c) = h.candidates("!po", 3);
    assert_eq!(start, 0);
    assert_eq!(c, vec!["!pool", "!poolfind", "!poolused"]);
    let (start, c) = h.candidates("lm; !ndiskd.p", 13);
    assert_eq!(start, 4);
    assert_eq!(c, vec!["!ndiskd.pendingnbls"]);
    let (_, c) = h.candidates(".sn", 3);
    assert_eq!(c, vec![".snapshot"]);
    // An argument position is not completed as a command.
    let (_, c) = h.candidates("dt lm", 5);
    assert!(c.is_empty());
}
