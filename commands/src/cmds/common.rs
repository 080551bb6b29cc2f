//! What several basic commands share: `*`/`?` patterns and WinDbg's names for types.

use kdnet_symbols::Ty;

/// `*` and `?` wildcards, as `lm m` and `dt TYPE ADDR Field*` take them.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8], budget: &mut u32) -> bool {
        *budget = budget.saturating_sub(1);
        if *budget == 0 {
            return false;
        }
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t, budget) || (!t.is_empty() && go(p, &t[1..], budget)),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..], budget),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..], budget),
            _ => false,
        }
    }
    let mut budget = 100_000;
    go(pattern.as_bytes(), text.as_bytes(), &mut budget)
}

/// A type's name as shown: unnamed types carry a unique suffix in the table.
pub(crate) fn shown_name(n: &str) -> &str {
    n.split('#').next().unwrap_or(n)
}

/// WinDbg's name for a type.
pub(crate) fn type_label(t: &Ty) -> String {
    match t {
        Ty::Base { name, size, signed } => base_label(name, *size, *signed).to_string(),
        Ty::Pointer(inner) => format!("Ptr64 {}", type_label(inner)),
        Ty::Udt(n) | Ty::Enum(n) => shown_name(n).to_string(),
        Ty::Array { count, elem } => format!("[{count}] {}", type_label(elem)),
        Ty::Bitfield { pos, len, .. } => {
            format!("Pos {pos}, {len} Bit{}", if *len == 1 { "" } else { "s" })
        }
        Ty::Function => "void".into(),
        Ty::Void => "Void".into(),
    }
}

/// WinDbg's name for a base type (`Uint4B`, `Char`).
pub(crate) fn base_label(name: &str, size: u64, signed: bool) -> &'static str {
    match name {
        "char" => "Char",
        "unsigned char" => "UChar",
        "wchar" | "wchar_t" => "Wchar",
        "float" => "Float",
        "double" => "Float",
        "void" => "Void",
        "bool" => "Bool",
        _ => match (size, signed) {
            (1, true) => "Char",
            (1, false) => "UChar",
            (2, true) => "Int2B",
            (2, false) => "Uint2B",
            (4, true) => "Int4B",
            (4, false) => "Uint4B",
            (8, true) => "Int8B",
            (8, false) => "Uint8B",
            _ => "Void",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(glob("nt*", "ntoskrnl"));
        assert!(glob("*ppm", "amdppm"));
        assert!(glob("a?dppm", "amdppm"));
        assert!(!glob("tcp", "tcpip"));
        assert!(!glob(&"*a".repeat(40), &"a".repeat(39)));
    }

    #[test]
    fn type_labels() {
        let u4 = Ty::Base {
            name: "unsigned long".into(),
            size: 4,
            signed: false,
        };
        assert_eq!(type_label(&u4), "Uint4B");
        assert_eq!(
            type_label(&Ty::Pointer(Box::new(Ty::Udt("_KTHREAD".into())))),
            "Ptr64 _KTHREAD"
        );
        assert_eq!(
            type_label(&Ty::Array {
                count: 4,
                elem: Box::new(Ty::Udt("_KWAIT_BLOCK".into()))
            }),
            "[4] _KWAIT_BLOCK"
        );
        let bf = Ty::Bitfield {
            pos: 4,
            len: 1,
            base: Box::new(u4.clone()),
        };
        assert_eq!(type_label(&bf), "Pos 4, 1 Bit");
        assert_eq!(shown_name("<unnamed-tag>#12"), "<unnamed-tag>");
    }
}
