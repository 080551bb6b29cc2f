//! `k [COUNT]` (also `kn`): the current processor's stack; `kb`/`kp` add each frame's four
//! home-slot arguments (`kp` as `kb`: parameter names need private symbols); `kc` shows only
//! the call sites; `kf` adds the stack memory each frame uses.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Kind, Param, Syntax, tokens};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::unwind::Regs;

/// Most frames shown.
const MAX_FRAMES: u64 = 256;

/// `k [= BasePtr StackPtr InstructionPtr] [COUNT]`: the rest of the line, as written.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[Param {
    name: "ARGS",
    kind: Kind::Rest,
    optional: true,
}]);

/// The usage line.
pub(crate) const USAGE: &str = "k[b|p|v|c|f][n][L] [= BasePtr StackPtr InstructionPtr] [COUNT]";

/// `k`'s arguments: where to start (`= rbp rsp rip`), and how many frames.
fn request(text: &str) -> Result<(Option<[&str; 3]>, Option<&str>), CmdError> {
    let usage = |why: String| CmdError::Usage(format!("k: {why}; usage: {USAGE}"));
    let tokens = tokens(text).map_err(usage)?;
    let mut start = None;
    let mut i = 0;
    if let Some(first) = tokens.first()
        && first.starts_with('=')
    {
        // `= a b c` or `=a b c`.
        let mut words: Vec<&str> = Vec::new();
        if first.len() > 1 {
            words.push(&first[1..]);
        }
        i = 1;
        while words.len() < 3 {
            let w = tokens
                .get(i)
                .ok_or_else(|| usage("= needs BasePtr, StackPtr and InstructionPtr".into()))?;
            words.push(w);
            i += 1;
        }
        start = Some([words[0], words[1], words[2]]);
    }
    let count = tokens.get(i).copied();
    if tokens.len() > i + 1 {
        return Err(usage(format!("unexpected {:?}", tokens[i + 1])));
    }
    Ok((start, count))
}

/// A processor's stack.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Stack {
    /// The processor whose stack it is.
    pub processor: u32,
    /// The register context it was walked from when `.cxr` or `.trap` set one
    /// (`context_record` or `trap_frame`; null: the processor's own registers).
    pub scope: Option<String>,
    /// The frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why the walk stopped early, or why there is nothing to walk (null when it did not).
    pub note: Option<String>,
    /// Which columns the text shows (`kb`/`kp`: the arguments); not part of the data.
    #[serde(skip)]
    pub layout: Layout,
}

/// Which columns a stack's text shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Layout {
    /// `k`: Child-SP, return address, call site.
    #[default]
    ChildSp,
    /// `kb`, `kp`: Child-SP, return address, the four home-slot arguments, call site.
    Arguments,
    /// `kc`: the call site only.
    CallSites,
    /// `kf`: the stack memory each frame uses, then as `k`.
    FrameMemory,
    /// `kv`: as `kb`, and the trap frames interrupt entries built, after their call sites.
    Verbose,
}

/// One frame.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Frame {
    /// The frame number (0 is the innermost).
    pub number: usize,
    /// RSP in this frame (Child-SP).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub child_sp: u64,
    /// Where this frame returns to.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub return_address: u64,
    /// RIP in this frame.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub ip: u64,
    /// `module!symbol+offset` of RIP.
    pub call_site: String,
    /// The module RIP is in (null when in none).
    pub module: Option<String>,
    /// The four home slots of the frame's arguments (what `kb` shows).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "[crate::hex::Hex; 4]")]
    pub args: [u64; 4],
    /// The trap frame this frame's interrupt or exception entry built (`KiPageFault`), which
    /// `.trap` loads (null for ordinary frames).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub trap_frame: Option<u64>,
}

impl Frame {
    /// The model's frame as the command shows it.
    pub(crate) fn from_model(f: &kdnet_model::nt::unwind::Frame) -> Frame {
        Frame {
            number: f.number,
            child_sp: f.child_sp,
            return_address: f.return_address,
            ip: f.ip,
            call_site: f.call_site.clone(),
            module: f.module.clone(),
            args: f.args,
            trap_frame: f.trap_frame,
        }
    }
}

/// Walks the current processor's stack (from the `.cxr`/`.trap` context when one is set),
/// marking the result incomplete when the walk stopped early.
pub(crate) fn walk(
    e: &mut Engine,
) -> Result<(Vec<kdnet_model::nt::unwind::Frame>, Option<String>), CmdError> {
    let n = e.processor;
    let ctx = e.context(n)?;
    let s = unwind_from(e, Regs::from_context(&ctx));
    Ok((s.frames, s.note))
}

/// Unwinds from `regs` within the current thread's stack when they lie in it.
fn unwind_from(e: &mut Engine, regs: Regs) -> kdnet_model::nt::unwind::Stack {
    let n = e.processor;
    let rsp = regs.rsp();
    let bounds = e
        .kernel
        .processors()
        .ok()
        .and_then(|cpus| cpus.into_iter().find(|c| c.number == n))
        .and_then(|c| e.kernel.thread(c.current).ok())
        .map(|t| (t.stack_limit, t.stack_base))
        .filter(|(lo, hi)| lo < hi && (*lo..*hi).contains(&rsp));
    let s = e.kernel.unwind(regs, bounds, true);
    if !s.complete {
        e.kernel.note_incomplete(format!(
            "the stack walk stopped early: {}",
            s.note.as_deref().unwrap_or("the walk ended")
        ));
    }
    s
}

pub(crate) fn run(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Stack, CmdError> {
    let (start, count) = request(a.text("ARGS").unwrap_or(""))?;
    let max = match count.map(|c| e.eval(c)).transpose()? {
        Some(n) => n.clamp(1, MAX_FRAMES) as usize,
        None => MAX_FRAMES as usize,
    };
    let n = e.processor;
    let ctx = e.context(n)?;
    let mut regs = Regs::from_context(&ctx);
    if let Some([bp, sp, ip]) = start {
        // `k = BasePtr StackPtr InstructionPtr`: walk from there instead.
        regs.gpr[5] = e.eval(bp)?;
        regs.gpr[4] = e.eval(sp)?;
        regs.rip = e.eval(ip)?;
    }
    let s = unwind_from(e, regs);
    let frames = s.frames.iter().take(max).map(Frame::from_model).collect();
    let scope = e
        .scope
        .as_ref()
        .filter(|sc| sc.processor == n)
        .map(|sc| sc.kind.name().to_string());
    Ok(Stack {
        processor: n,
        scope,
        frames,
        note: s.note,
        layout: match verb {
            "kb" | "kp" => Layout::Arguments,
            "kc" => Layout::CallSites,
            "kf" => Layout::FrameMemory,
            "kv" => Layout::Verbose,
            _ => Layout::ChildSp,
        },
    })
}

impl Render for Stack {
    fn render(&self, out: &mut String) {
        if self.scope.is_some() {
            out.push_str("  *** Stack trace for last set context - .thread/.cxr resets it\n");
        }
        match self.layout {
            Layout::Arguments | Layout::Verbose => out.push_str(
                " # Child-SP          RetAddr               : Args to Child                                                           : Call Site\n",
            ),
            Layout::ChildSp => {
                out.push_str(" # Child-SP          RetAddr               Call Site\n")
            }
            Layout::CallSites => out.push_str(" # Call Site\n"),
            Layout::FrameMemory => out.push_str(
                " #   Memory  Child-SP          RetAddr               Call Site\n",
            ),
        }
        let mut previous_sp: Option<u64> = None;
        for f in &self.frames {
            match self.layout {
                Layout::CallSites => out.push_str(&format!("{:02x} {}\n", f.number, f.call_site)),
                Layout::FrameMemory => {
                    // What the frame before it (deeper) took of the stack: the distance
                    // between the two Child-SPs.
                    let memory = previous_sp
                        .filter(|p| f.child_sp >= *p)
                        .map_or(String::new(), |p| format!("{:x}", f.child_sp - p));
                    out.push_str(&format!(
                        "{:02x} {memory:>8}  {} {}     {}\n",
                        f.number,
                        addr(f.child_sp),
                        addr(f.return_address),
                        f.call_site
                    ));
                }
                Layout::Arguments | Layout::Verbose => {
                    let trap = match (self.layout, f.trap_frame) {
                        (Layout::Verbose, Some(t)) => format!(" (TrapFrame @ {})", addr(t)),
                        _ => String::new(),
                    };
                    out.push_str(&format!(
                        "{:02x} {}{trap}\n",
                        f.number,
                        crate::engine::frame_with_args(
                            f.child_sp,
                            f.return_address,
                            &f.args,
                            "     ",
                            &f.call_site
                        )
                    ))
                }
                Layout::ChildSp => out.push_str(&format!(
                    "{:02x} {} {}     {}\n",
                    f.number,
                    addr(f.child_sp),
                    addr(f.return_address),
                    f.call_site
                )),
            }
            previous_sp = Some(f.child_sp);
        }
        if let Some(note) = &self.note {
            out.push_str(&format!("({note})\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts() {
        let mut s = Stack {
            processor: 0,
            scope: None,
            frames: vec![Frame {
                number: 0,
                child_sp: 0xfffff805_00001000,
                return_address: 0xfffff805_5c400010,
                ip: 0xfffff805_5c400000,
                call_site: "nt!KeBugCheckEx".into(),
                module: Some("nt".into()),
                args: [1, 2, 3, 4],
                trap_frame: None,
            }],
            note: Some("no unwind data".into()),
            layout: Layout::ChildSp,
        };
        let mut text = String::new();
        s.render(&mut text);
        assert_eq!(
            text,
            " # Child-SP          RetAddr               Call Site\n\
             00 fffff805`00001000 fffff805`5c400010     nt!KeBugCheckEx\n\
             (no unwind data)\n"
        );
        s.layout = Layout::Arguments;
        let mut text = String::new();
        s.render(&mut text);
        assert!(text.contains(
            "00 fffff805`00001000 fffff805`5c400010     : 00000000`00000001 00000000`00000002 \
             00000000`00000003 00000000`00000004 : nt!KeBugCheckEx\n"
        ));
        s.layout = Layout::CallSites;
        let mut text = String::new();
        s.render(&mut text);
        assert_eq!(text, " # Call Site\n00 nt!KeBugCheckEx\n(no unwind data)\n");
        // kf: the second frame used 0x48 bytes of stack above the first.
        let mut two = s.clone();
        let mut f1 = two.frames[0].clone();
        f1.number = 1;
        f1.child_sp += 0x48;
        two.frames.push(f1);
        two.layout = Layout::FrameMemory;
        let mut text = String::new();
        two.render(&mut text);
        assert!(
            text.contains(
                "\n01       48  fffff805`00001048 fffff805`5c400010     nt!KeBugCheckEx\n"
            ),
            "{text}"
        );
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(
            j["frames"][0]["args"],
            serde_json::json!([
                "0x0000000000000001",
                "0x0000000000000002",
                "0x0000000000000003",
                "0x0000000000000004"
            ])
        );
        assert_eq!(j.as_object().unwrap().len(), 4);
        // kv: the trap frame after the call site of the frame that built it; the context a
        // `.cxr` set is named above the frames.
        let mut v = s.clone();
        v.frames[0].trap_frame = Some(0xfffff805_00000f90);
        v.layout = Layout::Verbose;
        v.scope = Some("context_record".into());
        let mut text = String::new();
        v.render(&mut text);
        assert!(
            text.starts_with("  *** Stack trace for last set context"),
            "{text}"
        );
        assert!(
            text.contains(": nt!KeBugCheckEx (TrapFrame @ fffff805`00000f90)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_k_syntax() {
        assert_eq!(request("5").unwrap(), (None, Some("5")));
        assert_eq!(request("").unwrap(), (None, None));
        assert_eq!(
            request("= @rbp @rsp @rip 3").unwrap(),
            (Some(["@rbp", "@rsp", "@rip"]), Some("3"))
        );
        assert_eq!(
            request("=1 poi(@rsp) 3").unwrap(),
            (Some(["1", "poi(@rsp)", "3"]), None)
        );
        for bad in ["5 6", "= 1 2", "= 1 2 3 4 5"] {
            assert!(request(bad).is_err(), "{bad}");
        }
    }
}
