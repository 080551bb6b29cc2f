//! The command registry: one table of every command the engine runs (its name, aliases,
//! summary, declared arguments, handler and the type of its result). Dispatch, tab
//! completion, `.help`, the command list in `docs/commands.md` and the published JSON schemas
//! all come from it.
//!
//! Adding a command is its own file with a handler `fn(&mut Engine, &Args) -> Result<T,
//! CmdError>` whose `T` is a typed result ([`Render`] + [`schemars::JsonSchema`]), and one
//! [`command!`] line in [`COMMANDS`].

use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::args::{Args, Syntax};
use crate::engine::{CmdError, Engine, Output};

/// A typed result: its data (serialised as the command's JSON) and its text in WinDbg's layout,
/// rendered from that data.
pub trait Render: serde::Serialize {
    /// Appends the WinDbg-layout text.
    fn render(&self, out: &mut String);
}

/// Runs a command on its parsed arguments.
pub type Handler = fn(&mut Engine, &str, &Args<'_>) -> Result<Output, CmdError>;

/// One command.
#[derive(Clone, Copy)]
pub struct Command {
    /// As typed: `lm`, `!locks`, `?`.
    pub name: &'static str,
    /// Other spellings that run it (`!kdexts.locks`, `kb`).
    pub aliases: &'static [&'static str],
    /// One line: what it shows (`.help`).
    pub summary: &'static str,
    /// What it shows in full (`.help NAME`, the table in `docs/commands.md`).
    pub doc: &'static str,
    /// Command lines that show it at work: `.help NAME` lists them, and the schema test runs
    /// each on every simulated scenario (`{lock}`, `{thread}`, `{pool}` … stand for an address
    /// the scenario planted that the command is about).
    pub examples: &'static [&'static str],
    /// Its declared arguments.
    pub syntax: Syntax,
    /// The usage line, when the declared arguments do not say it all (`!process 0 7 [IMAGE]`).
    pub usage: Option<&'static str>,
    /// The file name of its result's schema (`docs/schema/v3/<id>.json`).
    pub id: &'static str,
    /// Runs it.
    pub handler: Handler,
    /// Its result's JSON schema.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command").field("name", &self.name).finish()
    }
}

impl Command {
    /// `lm [m PATTERN]`: the usage line.
    pub fn usage(&self) -> String {
        match self.usage {
            Some(u) => u.to_string(),
            None => {
                let args = self.syntax.usage();
                if args.is_empty() {
                    self.name.to_string()
                } else {
                    format!("{} {args}", self.name)
                }
            }
        }
    }

    /// Whether `verb` (as typed, any case) names this command.
    pub fn answers_to(&self, verb: &str) -> bool {
        self.name.eq_ignore_ascii_case(verb)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(verb))
    }
}

/// Builds the output of a typed result.
pub fn typed<T: Render>(r: &T) -> Result<Output, CmdError> {
    let mut text = String::new();
    r.render(&mut text);
    let json = serde_json::to_value(r)
        .map_err(|e| CmdError::Internal(format!("the result does not serialise: {e}")))?;
    Ok(Output { text, json })
}

/// The schema of `T` (for [`Command::schema`]).
pub fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.clone().into_root_schema_for::<T>()
}

/// One registry line.
macro_rules! command {
    (name: $name:literal, aliases: [$($alias:literal),*], id: $id:literal,
     summary: $summary:literal, doc: $doc:literal, syntax: $syntax:expr, usage: $usage:expr,
     examples: [$($ex:literal),*], run: $handler:path => $ty:ty $(,)?) => {
        $crate::registry::Command {
            name: $name,
            aliases: &[$($alias),*],
            summary: $summary,
            doc: $doc,
            examples: &[$($ex),*],
            syntax: $syntax,
            usage: $usage,
            id: $id,
            handler: |e, verb, a| {
                let r: $ty = $handler(e, verb, a)?;
                $crate::registry::typed(&r)
            },
            schema: $crate::registry::schema_of::<$ty>,
        }
    };
}

/// Every command, in the order `.help` lists them.
pub static COMMANDS: &[Command] = &[
    command! {
        name: "?", aliases: [], id: "evaluate",
        summary: "evaluates an expression",
        doc: "evaluates: `Evaluate expression: <signed decimal> = <hex>`",
        syntax: crate::cmds::evaluate::SYNTAX, usage: None,
        examples: ["? 1 + 2", "? @$thread", "? nt!KiWaitNever"],
        run: crate::cmds::evaluate::run => crate::cmds::evaluate::Evaluated,
    },
    command! {
        name: "lm", aliases: [], id: "lm",
        summary: "loaded modules sorted by address, with their symbol state",
        doc: "loaded modules sorted by address, with symbol state (`pdb symbols`, `export \
              symbols`, `no symbols`, `deferred` when not loaded yet); `*` and `?` in the \
              pattern; options run together or apart: `v` verbose (path, timestamp, checksum, \
              size, PDB), `f` full path, `n` image name, `t` timestamp, `l` symbols loaded, `e` \
              symbol problems, `k`/`o` (every module here), `u` (none), `a ADDR` the module \
              holding ADDR",
        syntax: crate::cmds::lm::SYNTAX, usage: Some("lm [v|f|n|t|l|e|k|u|o…] [a ADDR] [m PATTERN]"),
        examples: ["lm", "lm m nt*", "lm vm nt", "lm f", "lm t m nd*", "lm a nt+0x1000"],
        run: crate::cmds::lm::run => crate::cmds::lm::Modules,
    },
    command! {
        name: "db", aliases: ["dw", "dd", "dq", "dp"], id: "display",
        summary: "memory as bytes (with ASCII), words, dwords, qwords; unreadable memory shows as ??",
        doc: "memory as bytes (with ASCII), words, dwords, qwords; unreadable memory shows as \
              `??`; from ADDR to END (inclusive) or COUNT units (128 bytes by default)",
        syntax: crate::cmds::display::SYNTAX, usage: Some("db|dw|dd|dq|dp ADDR [END] [L COUNT]"),
        examples: ["db @rsp", "dw @rsp L4", "dd nt!KiWaitNever L1", "dq @rsp L2", "dp @rsp L2",
                   "dq poi(@rsp) L2", "dd @rsp @rsp+0x10"],
        run: crate::cmds::display::memory => crate::cmds::display::Memory,
    },
    command! {
        name: "dps", aliases: ["dqs"], id: "display-symbols",
        summary: "pointers with the symbol each points at",
        doc: "pointers with the symbol each points at",
        syntax: crate::cmds::display::SYNTAX, usage: None,
        examples: ["dps @rsp L8"],
        run: crate::cmds::display::pointers => crate::cmds::display::Pointers,
    },
    command! {
        name: ".writemem", aliases: [], id: "writemem",
        summary: "writes a range of memory to a file",
        doc: "writes memory from ADDR to END (inclusive) or COUNT bytes (`L?COUNT` too) to FILE, \
              256 MB at most; read in full requests where the pages are physically contiguous; \
              the file appears whole (mode 0600) or not at all: an unreadable address fails the \
              command and names it; a relative FILE is relative to the current directory",
        syntax: crate::cmds::writemem::SYNTAX, usage: None,
        examples: [".writemem {dir}/nt.bin nt L?1000", ".writemem {dir}/kd.bin nt nt+0x1fff"],
        run: crate::cmds::writemem::run => crate::cmds::writemem::Written,
    },
    command! {
        name: "s", aliases: [], id: "search",
        summary: "searches memory for bytes, words, dwords, qwords or a string",
        doc: "searches ADDR to END (inclusive), or BYTES bytes (`L?` past 256 MB), for \
              PATTERN: bytes by default, `-w`/`-d`/`-q` words, dwords, qwords (matches aligned \
              to their size; `'MZ'` is a character constant), `-a` an ASCII and `-u` a UTF-16 \
              string; each match is shown as a line of memory from it, or with `-[1]` as its \
              address only. On a live target each run of mapped pages is searched on the \
              target's side (one request per match); unmapped pages are counted, not read; \
              memory that could not be read (or a dump lacks) makes the result incomplete; \
              4,096 matches at most, and a search cut there says so",
        syntax: crate::cmds::search::SYNTAX, usage: Some(crate::cmds::search::USAGE),
        examples: ["s -[1]b nt L?1000 4d 5a", "s -q @$prcb L?4000 @$thread",
                   "s -a nt L?2000 \"PAGE\""],
        run: crate::cmds::search::run => crate::cmds::search::Found,
    },
    command! {
        name: ".dump", aliases: [], id: "dump",
        summary: "writes the target's memory as a crash dump: complete (/f), kernel (/k), kernel and user (/ka)",
        doc: "writes a Windows crash dump of a kernel target to FILE, as WinDbg's kernel-mode \
              `.dump`: `/f` a complete memory dump (every page of the RAM that \
              nt!MmPhysicalMemoryBlock describes; a full dump with the runs in its header when \
              they fit, else a bitmap dump), `/k` a kernel memory dump (the RAM mapped in the \
              kernel half and its page tables, walked from the kernel's page-table root; a \
              bitmap dump), `/ka` that and the current process's user pages (WinDbg's names; \
              its default, a small memory dump `/m`, is not written here); `/o` replaces an \
              existing FILE (without it an existing FILE is an error, as in WinDbg), \
              `/c COMMENT` goes in the header. Pages are read past the cache in requests at \
              the protocol's limit and streamed to FILE.partial in bounded memory; FILE \
              appears (mode 0600) only once whole. After a lost link or a spent time budget \
              the same `.dump` goes on where it stopped, on the same machine only (kernel \
              base, build, page-table root, processors and memory runs are checked), and says \
              so in its result and the dump's comment: whether the target ran between the \
              parts (the dump then holds pages from two moments). A page the target cannot \
              read is left out and named, never written as zeros (as Windows leaves out of its \
              dumps pages it cannot read; the result is then marked incomplete), and device \
              memory mapped in the kernel half is left out of /k and /ka; on a terminal, \
              progress (pages, MB/s, time left) shows on standard error",
        syntax: crate::cmds::dump::SYNTAX, usage: Some(".dump /f|/k|/ka [/o] [/c COMMENT] FILE"),
        examples: [".dump /o /f {dir}/complete.dmp", ".dump /o /k {dir}/kernel.dmp",
                   ".dump /o /c \"after the hang\" /ka {dir}/kernel-user.dmp"],
        run: crate::cmds::dump::run => crate::cmds::dump::Dumped,
    },
    command! {
        name: "dt", aliases: [], id: "dt",
        summary: "a type's fields; with an address, their values",
        doc: "a type's fields (offsets, types, bitfield positions); with an address, their \
              values (an embedded `_LIST_ENTRY` as its links, a `_UNICODE_STRING` as its text, \
              a null pointer as `(null)`); FIELD is a name, a pattern (`Image*`), a nested \
              path (`Tcb.State`), several of them, or with `-y` a name's start; a TYPE with \
              `*` lists the types it matches (`dt nt!_KTH*`). `-r[N]` expands embedded \
              structures and what pointers lead to, N levels (1-9; `-r` alone 9); `-b` \
              expands embedded structures and arrays fully and the structure's own pointers \
              once; `-a[N]` shows array elements one per line; `-l FIELD` walks a list \
              through FIELD from ADDR, one record after another, until it returns to ADDR \
              or reaches null; `-c` compact, `-v` sizes and member counts, `-o` no offsets, \
              `-i` no indent, `-n NAME` a field name that looks like a number. Bounded: \
              20,000 lines, 512 reads past the structure, 4,096 elements and 4,096 records; \
              a result cut at a bound says so",
        syntax: crate::cmds::dt::SYNTAX, usage: Some(crate::cmds::dt::USAGE),
        examples: ["dt nt!_KTHREAD @$thread", "dt _LIST_ENTRY", "dt nt!_EPROCESS @$proc Image*",
                   "dt -r1 nt!_KTHREAD @$thread ApcState", "dt -a nt!_KTHREAD @$thread WaitBlock",
                   "dt nt!_KPRCB*", "dt -v _LIST_ENTRY",
                   "dt nt!_EPROCESS -l ActiveProcessLinks.Flink @$proc UniqueProcessId ImageFileName"],
        run: crate::cmds::dt::run => crate::cmds::dt::Dt,
    },
    command! {
        name: "k", aliases: ["kn", "kb", "kp", "kc", "kf", "kv"], id: "stack",
        summary: "the current processor's stack; kb/kp add the home-slot arguments, kv trap frames too, kc call sites only, kf frame sizes",
        doc: "the current processor's stack: frame number, Child-SP, return address, call site; \
              `kb` adds the four home-slot arguments (`kp` the same: parameter names need \
              private symbols), `kv` the same and `(TrapFrame @ …)` after the frames of \
              interrupt and exception entries (what `.trap` takes), `kc` shows the call sites \
              only, `kf` the stack memory each frame uses; after `.cxr` or `.trap` the walk \
              starts from that context (and says so); the letters run together as WinDbg takes them (`kbn`, `kpL`: frame \
              numbers are always shown, and there are no source lines to hide); \
              `= BasePtr StackPtr InstructionPtr` walks from those registers instead of the \
              processor's (a stack found by hand, a saved context)",
        syntax: crate::cmds::stack::SYNTAX, usage: Some(crate::cmds::stack::USAGE),
        examples: ["k", "k 5", "kb 3", "kv", "kc", "kf 4", "kbn 2", "k = @rbp @rsp @rip 3"],
        run: crate::cmds::stack::run => crate::cmds::stack::Stack,
    },
    command! {
        name: "u", aliases: ["ub"], id: "u",
        summary: "x64 disassembly: u from ADDR (8 instructions, or L n), ub the n before ADDR",
        doc: "x64 disassembly in WinDbg's layout (MASM syntax): `u` from ADDR (by default where \
              the last `u` stopped, else the current instruction), 8 instructions or `L n`; \
              `ub` the n instructions before ADDR, decoded from the function's start where its \
              module's unwind data gives it (else the boundaries are guessed, and it says so). \
              Call and branch targets and RIP-relative operands are symbolised (the symbol, \
              then the address in parentheses); a label line shows where a symbol \
              starts. Bytes come from memory a page's piece at a time, else from the module's \
              image file on the symbol path (said); bytes neither has end the listing with \
              `??` and the result is incomplete",
        syntax: crate::cmds::disasm::SYNTAX, usage: Some("u|ub [ADDR] [L n]"),
        examples: ["u @rip", "u nt!KiSwapContext L4", "ub @rip L3"],
        run: crate::cmds::disasm::run => crate::cmds::disasm::Disassembly,
    },
    command! {
        name: "uf", aliases: [], id: "uf",
        summary: "x64 disassembly of the whole function holding ADDR, from its unwind data",
        doc: "the whole function holding ADDR: its extent from the module's `.pdata` (a chained \
              fragment followed to its primary record), and the chained fragments its branches \
              reach, in address order, with a label line at each branch target; a function no \
              unwind record covers (a leaf) is an error that says to use `u`",
        syntax: crate::cmds::disasm::UF_SYNTAX, usage: None,
        examples: ["uf nt!KiSwapContext"],
        run: crate::cmds::disasm::function => crate::cmds::disasm::Disassembly,
    },
    command! {
        name: "x", aliases: [], id: "x",
        summary: "the symbols matching module!pattern, by address",
        doc: "the symbols whose names match PATTERN (`module!name`, `*` and `?` in both \
              halves, any case), from each matching module's symbol table, or its exports \
              where that is all it has (each match says which), by address; modules that \
              match but have no symbols are named; 100,000 matches at most, and a list cut \
              there says so",
        syntax: crate::cmds::x::SYNTAX, usage: Some("x module!pattern"),
        examples: ["x nt!KeWait*", "x nt!KiSwap*", "x *!DriverEntry"],
        run: crate::cmds::x::run => crate::cmds::x::Symbols,
    },
    command! {
        name: "ln", aliases: [], id: "ln",
        summary: "the nearest symbols before and after an address",
        doc: "the nearest symbols before and after an address, and exact matches",
        syntax: crate::cmds::ln::SYNTAX, usage: None,
        examples: ["ln @rip", "ln nt!KiWaitNever"],
        run: crate::cmds::ln::run => crate::cmds::ln::Nearest,
    },
    command! {
        name: "r", aliases: [], id: "r",
        summary: "the current processor's registers, flags and segments",
        doc: "the current processor's registers, flags and segments",
        syntax: crate::cmds::registers::SYNTAX, usage: None,
        examples: ["r", "r rip,rsp", "r cr3", "r eax, zf", "r @$thread", "r $t0 = @$prcb + 8", "rM 0xa2"],
        run: crate::cmds::registers::run => crate::cmds::registers::Registers,
    },
    command! {
        name: "rm", aliases: [], id: "register-mask",
        summary: "shows or sets the register mask `r` uses",
        doc: "show or set the register mask plain `r` uses: 0x2 the integer registers, 0x20 the \
              debug registers and CR4, 0x80 the control registers, 0x100 the descriptor tables \
              (`rM MASK` uses a mask once)",
        syntax: crate::cmds::registers::MASK_SYNTAX, usage: None,
        examples: ["rm", "rm 0xa2"],
        run: crate::cmds::registers::mask => crate::cmds::registers::RegisterMask,
    },
    command! {
        name: "~Ns", aliases: [], id: "processor",
        summary: "switches to processor N (decimal)",
        doc: "switch to processor N: `r` and `k` then show its registers and stack (in a dump, \
              from its KPRCB's saved state)",
        syntax: crate::cmds::processor::SYNTAX, usage: Some("~Ns"),
        examples: ["~1s"],
        run: crate::cmds::processor::run => crate::cmds::processor::Switched,
    },
    command! {
        name: ".bugcheck", aliases: [], id: "bugcheck",
        summary: "the bugcheck code and its four parameters",
        doc: "the bugcheck code and its four parameters (code 0 and a note when the target has \
              not bugchecked)",
        syntax: Syntax::NONE, usage: None,
        examples: [".bugcheck"],
        run: crate::cmds::session::bugcheck => crate::cmds::session::Bugcheck,
    },
    command! {
        name: ".cxr", aliases: [], id: "cxr",
        summary: "a CONTEXT record's registers become the current ones for r, k and u; no address: back",
        doc: "the registers of the CONTEXT record at ADDR (an exception's, as a bugcheck's \
              parameters give it) become the current processor's for `r`, `k`, `kv`, `u` and \
              `@reg` in expressions, until `.cxr` with no address, a processor switch (`~Ns`) \
              or the target running; shows them and the instruction at RIP. An address that \
              does not hold an x64 context record (ContextFlags, code selector) is an error",
        syntax: crate::cmds::scope::SYNTAX, usage: Some(".cxr [ADDR]"),
        examples: [".cxr {cxr}", ".cxr"],
        run: crate::cmds::scope::cxr => crate::cmds::scope::ScopeSet,
    },
    command! {
        name: ".trap", aliases: [], id: "trap",
        summary: "a trap frame's registers become the current ones for r, k and u; no address: back",
        doc: "the registers of the KTRAP_FRAME at ADDR (its layout from the kernel's symbols; \
              `kv` shows where interrupt and exception entries built theirs) become the current \
              processor's as with `.cxr`; a trap frame keeps the volatile registers, RBP, RIP, \
              RSP and the flags: RBX, RSI, RDI and R12-R15 show as zero, as the note says",
        syntax: crate::cmds::scope::SYNTAX, usage: Some(".trap [ADDR]"),
        examples: [".trap {trapframe}", ".trap"],
        run: crate::cmds::scope::trap => crate::cmds::scope::ScopeSet,
    },
    command! {
        name: ".exr", aliases: [], id: "exr",
        summary: "an exception record, decoded (-1: the last exception the target reported)",
        doc: "the EXCEPTION_RECORD at ADDR: the address (symbolised), the code and its name, \
              the flags, the parameters and what they say (`Attempt to read from address …`, \
              a fast-fail subcode); `-1` shows the exception the target last reported (a live \
              target's state change, a dump header's record)",
        syntax: crate::cmds::scope::EXR_SYNTAX, usage: Some(".exr ADDR|-1"),
        examples: [".exr {exr}", ".exr -1"],
        run: crate::cmds::scope::exr => crate::cmds::scope::Exception,
    },
    command! {
        name: ".frame", aliases: [], id: "frame",
        summary: "a frame of the current stack (/r: with its registers; /c: make them the context)",
        doc: "frame N of the current stack, numbered as `k` numbers it (from the `.cxr`/`.trap` \
              context when one is set); `/r` adds the frame's registers as the walk recovered \
              them (the non-volatile ones exact, the others those of the frame inside it) and \
              the instruction at its RIP; `/c` makes them the register context `r`, `k`, `u` \
              and `@reg` use, as `.cxr` does, until `.cxr` with no address; without N, the \
              frame chosen last",
        syntax: crate::cmds::scope::FRAME_SYNTAX, usage: Some(".frame [/r] [/c] [N]"),
        examples: [".frame 1", ".frame /r 2", ".frame /c 1", ".frame"],
        run: crate::cmds::scope::frame => crate::cmds::scope::FrameChosen,
    },
    command! {
        name: ".lastevent", aliases: [], id: "lastevent",
        summary: "why the target stopped",
        doc: "why the target stopped, as the target reported it (a break-in, an exception, a \
              bugcheck)",
        syntax: Syntax::NONE, usage: None,
        examples: [".lastevent"],
        run: crate::cmds::session::last_event => crate::cmds::session::LastEvent,
    },
    command! {
        name: ".time", aliases: [], id: "time",
        summary: "the target's clock and uptime",
        doc: "the target's system time (UTC, with its time zone) and how long it has run, from \
              KUSER_SHARED_DATA",
        syntax: Syntax::NONE, usage: None,
        examples: [".time"],
        run: crate::cmds::session::time => crate::cmds::session::Time,
    },
    command! {
        name: ".cls", aliases: [], id: "cls",
        summary: "clears the prompt's screen",
        doc: "clear the prompt's screen (does nothing in scripts and JSON)",
        syntax: Syntax::NONE, usage: None,
        examples: [".cls"],
        run: crate::cmds::session::cls => crate::cmds::session::Cleared,
    },
    command! {
        name: ".reload", aliases: [], id: "reload",
        summary: "reads the module list and symbols again (/f: load them now; or one module)",
        doc: "read the module list again and look for every module's symbols again along the \
              symbol path (`/f`: load them now rather than when first needed; `MODULE`: only \
              that one)",
        syntax: crate::cmds::session::REST, usage: Some(".reload [/f] [MODULE]"),
        examples: [".reload", ".reload /f nt", ".reload ndis.sys"],
        run: crate::cmds::session::reload => crate::cmds::session::Reloaded,
    },
    command! {
        name: ".sympath", aliases: [".sympath+", ".symfix", ".symfix+"], id: "sympath",
        summary: "shows or sets the symbol path (`+`: adds to it); .symfix: Microsoft's server",
        doc: "show the symbol path, set it (`.sympath PATH`) or add to it (`.sympath+ PATH`), \
              in WinDbg's syntax (`srv*CACHE*URL;DIR`); `.symfix [CACHE]` sets it to \
              Microsoft's public symbol server with a local cache (`.symfix+` adds that); the \
              symbols are looked for along the new path at once (`.reload` as WinDbg needs is \
              done for you)",
        syntax: crate::cmds::session::REST, usage: Some(".sympath[+] [PATH] | .symfix[+] [CACHE]"),
        examples: [".sympath"],
        run: crate::cmds::session::sympath => crate::cmds::session::SymPath,
    },
    command! {
        name: ".logopen", aliases: [".logappend", ".logclose"], id: "log",
        summary: "opens (or appends to, or closes) the session log",
        doc: "write every command and its output from here on to FILE (`.logopen` starts it \
              anew, `.logappend` adds to it; owner-only, it holds kernel memory); `.logclose` \
              closes it",
        syntax: crate::cmds::session::REST, usage: Some(".logopen FILE | .logappend FILE | .logclose"),
        examples: [".logclose"],
        run: crate::cmds::session::log => crate::cmds::session::Log,
    },
    command! {
        name: "vertarget", aliases: ["version"], id: "vertarget",
        summary: "the target's build, processors, kernel base, module list, symbol source",
        doc: "the target's build, processors, kernel base, module list, symbol source",
        syntax: Syntax::NONE, usage: None,
        examples: ["vertarget"],
        run: crate::cmds::vertarget::run => crate::cmds::vertarget::Version,
    },
    command! {
        name: "bp", aliases: ["bu", "bm"], id: "bp",
        summary: "sets a breakpoint: bp ADDR, bu for a module not loaded yet, options /1 /p /t /w, a pass count, commands",
        doc: "sets a software breakpoint: `bp [/1] [/p EPROCESS] [/t ETHREAD] [/w \"COND\"] ADDR               [PASSES] [\"COMMANDS\"]`; `bu` the same, deferred until its module loads when it               cannot be resolved now; `/1` deletes it at its first stop, `/p` and `/t` stop only               in that process or thread, `/w` only when the expression is not zero (judged on the               host at each hit), PASSES stops on the Nth pass, COMMANDS run when it stops               (`j COND 'A' ; 'B'` and `.if (COND) { A } .elsif (COND) { B } .else { C }` choose, a final `g` or `gc` goes on). Breakpoints are written               into the target only while it runs (`g`, `p`, `t`)",
        syntax: crate::cmds::run::SYNTAX, usage: Some("bp [/1] [/p EPROCESS] [/t ETHREAD] [/w \"COND\"] ADDR [PASSES] [\"COMMANDS\"]"),
        examples: ["bp nt!IofCompleteRequest", "bp /w \"dwo(@rcx+0x30) == 0xc000000d\" nt!IofCompleteRequest", "bu /1 nt!IopfCompleteRequest \"r rcx\""],
        run: crate::cmds::run::set => crate::cmds::run::Set,
    },
    command! {
        name: "ba", aliases: [], id: "ba",
        summary: "sets a hardware breakpoint through a debug register: ba e|r|w|i SIZE ADDR",
        doc: "sets a hardware breakpoint through one of the four debug registers: `ba ACCESS SIZE \
              [options] ADDR [PASSES] [\"COMMANDS\"]`, ACCESS `e` (execute), `w` (write), `r` \
              (read or write), `i` (I/O), SIZE 1, 2, 4 or 8 (aligned); the options of `bp`",
        syntax: crate::cmds::run::SYNTAX, usage: Some("ba e|r|w|i 1|2|4|8 [options] ADDR [PASSES] [\"COMMANDS\"]"),
        examples: ["ba w 8 nt!KiWaitNever", "ba e 1 nt!IofCompleteRequest"],
        run: crate::cmds::run::set => crate::cmds::run::Set,
    },
    command! {
        name: "bl", aliases: [], id: "bl",
        summary: "the breakpoints: number, enabled, address, passes, where, condition, commands",
        doc: "the session's breakpoints as WinDbg lists them: number, `e`/`d` (enabled, \
              disabled; `u` for a deferred one not resolved yet), address, passes left and the \
              pass count, where it was set, its condition and commands",
        syntax: crate::cmds::run::SYNTAX, usage: Some("bl"),
        examples: ["bl"],
        run: crate::cmds::run::list => crate::cmds::run::List,
    },
    command! {
        name: "bc", aliases: ["bd", "be"], id: "bc",
        summary: "clears (bc), disables (bd) or enables (be) breakpoints: numbers, ranges, *",
        doc: "clears (`bc`), disables (`bd`) or enables (`be`) breakpoints by number: `*`, `0 2`, \
              `1-3`, `0,2`",
        syntax: crate::cmds::run::SYNTAX, usage: Some("bc|bd|be * | N [N…] | N-M"),
        examples: ["bd 0", "be 0", "bc *"],
        run: crate::cmds::run::change => crate::cmds::run::Changed,
    },
    command! {
        name: "g", aliases: ["gc", "gh", "gn"], id: "g",
        summary: "lets the target run until a breakpoint, an exception or the time budget; g ADDR runs to ADDR",
        doc: "lets the target run until one of the session's breakpoints stops it, an exception \
              the filters stop on (`sx`), a module event asked for, or the command's time budget \
              runs out (then it is broken into); `g ADDR` also stops at ADDR; `gh` continues an \
              exception as handled, `gn` as not handled; `gc` is `g`. Breakpoint hits that do \
              not stop (a condition false, a pass count, a filter) are counted; a breakpoint's \
              commands that end with `g` run and the target goes on",
        syntax: crate::cmds::run::SYNTAX, usage: Some("g [ADDR]"),
        examples: ["g --max-seconds 0.2", "g nt!IopfCompleteRequest --max-seconds 0.2"],
        run: crate::cmds::run::go => crate::cmds::run::Ran,
    },
    command! {
        name: "p", aliases: ["t", "pc", "tc"], id: "step",
        summary: "steps one instruction (p over calls, t into them); p N, t N; pc, tc to the next call",
        doc: "steps one instruction and shows the registers and the next instruction: `p` steps \
              over calls (a one-time breakpoint after the call), `t` into them (the trap flag); \
              `p N`, `t N` take N steps; `pc` and `tc` step (over, into calls) until the next \
              instruction is a call and show that stop only (at most 10,000 steps, each a stop \
              of the target); a breakpoint met on the way stops it",
        syntax: crate::cmds::run::SYNTAX, usage: Some("p|t [COUNT] | pc | tc"),
        examples: ["t", "p", "p 2", "pc"],
        run: crate::cmds::run::go => crate::cmds::run::Ran,
    },
    command! {
        name: "gu", aliases: [], id: "gu",
        summary: "runs until the current function returns to its caller",
        doc: "runs until the current function returns to its caller (a one-time breakpoint at \
              the return address the unwinder finds, taken only in this frame)",
        syntax: crate::cmds::run::SYNTAX, usage: Some("gu"),
        examples: ["gu --max-seconds 0.2"],
        run: crate::cmds::run::go => crate::cmds::run::Ran,
    },
    command! {
        name: "sx", aliases: ["sxe", "sxd", "sxn", "sxi"], id: "sx",
        summary: "event filters: sxe (break), sxd (second chance), sxn (output), sxi (ignore) for ld:MODULE, ud, av, codes",
        doc: "the event filters (`sx`), or sets one: `sxe` breaks, `sxd` breaks on the second \
              chance, `sxn` prints and goes on, `sxi` goes on silently; events are `ld[:MODULE]` \
              (a module load; the target stops when it loads), `ud[:MODULE]`, `av`, `bpe`, \
              `sse`, `dz`, `ii`, `sov`, or an exception code. Module loads nobody asked to stop on \
              are continued at once",
        syntax: crate::cmds::run::SYNTAX, usage: Some("sx | sxe|sxd|sxn|sxi EVENT"),
        examples: ["sx", "sxe ld:cimfs.sys", "sxd av"],
        run: crate::cmds::run::sx => crate::cmds::run::Filters,
    },
    command! {
        name: "!locks", aliases: ["!kdexts.locks"], id: "locks",
        summary: "executive resources: held ones (all with -v or -d), owners, waiters, contention",
        doc: "executive resources: held ones (all with `-v` or `-d`), owners with `<*>`, \
              waiters, contention, `N total locks, M locks currently held`; progress dots as \
              WinDbg prints them; `-v` also shows each owner thread as `!thread` does, with its \
              stack (the first 64 owner threads; each read once)",
        syntax: crate::ext::locks::SYNTAX, usage: None,
        examples: ["!locks", "!locks -v", "!locks {lock}"],
        run: crate::ext::locks::run => crate::ext::locks::Locks,
    },
    command! {
        name: "!thread", aliases: [], id: "thread",
        summary: "a thread: state, waits, IRPs, process, times, start addresses, the stack",
        doc: "a thread (the current one by default): state, wait reason and mode, waited \
              objects (mutant owner, semaphore limit), IRPs, owning and attached process, wait \
              age, times, start addresses, stack bounds, the stack",
        syntax: crate::ext::threads::THREAD, usage: Some("!thread [ADDR|-1] [FLAGS]"),
        examples: ["!thread", "!thread {thread}", "!thread -1 0"],
        run: crate::ext::threads::thread_command => crate::ext::threads::ThreadInfo,
    },
    command! {
        name: "!process", aliases: [], id: "process",
        summary: "processes; flag 1 adds token, VADs, working set and times; 2 and 4 threads and stacks",
        doc: "processes with their handle counts; flag 1 adds what WinDbg shows of each \
              (VAD root and count, private/modified/locked pages, device map, token, elapsed, \
              user and kernel time, working set, virtual size, page faults, base priority, \
              commit charge, job; a field the build's EPROCESS lacks shows `?`); flag 2/4 add \
              threads and their stacks",
        syntax: crate::ext::threads::PROCESS, usage: Some("!process [ADDR|0] [FLAGS] [IMAGE]"),
        examples: ["!process 0 0", "!process 0 7", "!process 0 2 System"],
        run: crate::ext::threads::process_command => crate::ext::threads::Processes,
    },
    command! {
        name: "!stacks", aliases: [], id: "stacks",
        summary: "every thread with what it is blocked in, then threads grouped by identical stacks",
        doc: "every thread with what it is blocked in (the first frame off the generic wait \
              path), then threads grouped by identical stacks; 1 adds threads whose stack is \
              paged out, 2 prints whole stacks; FILTER keeps threads whose stack mentions it",
        syntax: crate::ext::threads::STACKS, usage: Some("!stacks [0|1|2] [FILTER]"),
        examples: ["!stacks", "!stacks 2", "!stacks 1 Wait"],
        run: crate::ext::threads::stacks_command => crate::ext::threads::Stacks,
    },
    command! {
        name: "!running", aliases: [], id: "running",
        summary: "each processor's current and next thread",
        doc: "each processor's current and next thread, idle processors, and whether a DPC \
              routine is active on it (a processor retiring DPCs on its idle thread is not \
              idle); `-t` adds the running threads' stacks, `-i` with it idle processors' too \
              (`-ti` as WinDbg takes it)",
        syntax: crate::ext::threads::RUNNING, usage: None,
        examples: ["!running", "!running -t", "!running -ti"],
        run: crate::ext::threads::running_command => crate::ext::threads::Running,
    },
    command! {
        name: "!analyze", aliases: [], id: "analyze",
        summary: "the bugcheck, its parameters, the faulting module and stack, a failure bucket",
        doc: "bugcheck name, parameters and what they mean, the stopped processor's process and \
              stack, the faulting module (the module of the exception address when the code \
              carries one, otherwise the first frame outside nt and hal), a failure bucket; for \
              an exception bugcheck (0x1E, 0x3B, 0x7E, 0x8E) the exception record decoded as \
              `.exr` shows it, the registers of the context record or trap frame the parameters \
              name (as `.cxr`/`.trap` loads them), the faulting instruction, the address it read \
              or wrote, and the stack walked from those registers; for 0x133 the DPC routine \
              that ran too long (the processor's active DPC, else `CurrentDpcRoutine`, else the \
              frame KiExecuteAllDpcs called), where the clock interrupt found it, the DPC time \
              count against the allotment, and every processor's queued DPCs; for 0x1CA the \
              watchdog's times (last reset, the interrupt time the clock last published against \
              the bugcheck's, the kernel's clock owner against parameter 4), every processor's \
              IRQL, interrupt flag, thread and stack, and the clock processor's driver frame as \
              the faulting place; on a machine that did not crash it says so",
        syntax: crate::ext::analyze::SYNTAX, usage: None,
        examples: ["!analyze -v", "!analyze"],
        run: crate::ext::analyze::run => crate::ext::analyze::Analysis,
    },
    command! {
        name: "!ready", aliases: [], id: "ready",
        summary: "each processor's ready threads by priority, and the queue processors share",
        doc: "the threads waiting for a processor: each processor's ready lists \
              (`DispatcherReadyListHead`) by priority, highest first, in queue order, then the \
              `_KSHARED_READY_QUEUE` the processors share on builds that have one; each thread \
              with its Cid, process and state (a thread on a ready list in another state, or a \
              list ReadySummary does not mention, is said). Every list is walked with a bound",
        syntax: Syntax::NONE, usage: None,
        examples: ["!ready"],
        run: crate::ext::sched::ready => crate::ext::sched::Ready,
    },
    command! {
        name: "!dpcs", aliases: [], id: "dpcs",
        summary: "each processor's queued DPCs, normal and threaded, with their routines",
        doc: "the DPCs queued on each processor (`DpcData[0]` normal, `DpcData[1]` threaded), in \
              queue order: the KDPC, its routine symbolised, its context and importance, and \
              each queue's depth and the DPCs it has run; a queue that does not hold as many as \
              its depth says, or cannot be read whole, is said",
        syntax: Syntax::NONE, usage: None,
        examples: ["!dpcs"],
        run: crate::ext::sched::dpcs => crate::ext::sched::Dpcs,
    },
    command! {
        name: "!timer", aliases: [], id: "timer",
        summary: "every processor's timer table: due times, periods, DPC routines and waiting threads",
        doc: "each processor's `_KTIMER_TABLE` (two sets of lists on builds that have them), \
              every timer in every list by due time: its list, the interrupt time and wall-clock \
              time it fires at, `P` when periodic, `X` when already due (still on its list \
              because the clock interrupt has not run), and the DPC routine it queues (its `Dpc` \
              decoded as the kernel stores it, with KiWaitNever and KiWaitAlways) or the thread \
              waiting on it. A list that loops, breaks or holds something that is not a timer, \
              or a DPC that does not decode to a DPC, is said and the result marked incomplete",
        syntax: Syntax::NONE, usage: None,
        examples: ["!timer"],
        run: crate::ext::timers::timer => crate::ext::timers::TimerReport,
    },
    command! {
        name: "!exqueue", aliases: [], id: "exqueue",
        summary: "the executive's worker queues: their threads, busy or waiting, and pending work items",
        doc: "every executive work queue, found as the build keeps them (`nt!ExWorkerQueue`'s \
              critical, delayed and hypercritical queues; each NUMA node's `ExWorkQueues`; the \
              system partition's `WorkQueues[node][index]`, each checked against its back \
              pointer): its threads and the most it may have, the threads active against its \
              concurrency, items processed, each pending WORK_QUEUE_ITEM by priority with its \
              routine symbolised, and each worker thread with its state, busy or waiting for \
              work. Flags: 1 busy threads, 2 threads waiting for work, 4 pending items \
              (default all)",
        syntax: crate::ext::exqueue::SYNTAX, usage: Some("!exqueue [Flags]"),
        examples: ["!exqueue", "!exqueue 5"],
        run: crate::ext::exqueue::exqueue => crate::ext::exqueue::ExQueues,
    },
    command! {
        name: "!idt", aliases: [], id: "idt",
        summary: "the current processor's interrupt descriptor table, handlers and connected ISRs",
        doc: "the IDT at the current processor's `KPCR.IdtBase` (`~Ns` picks another): each \
              present gate's vector, handler symbolised, gate type, privilege and interrupt \
              stack (the TSS's Ist entry its index selects), and the interrupt objects the \
              KPRCB connects to the vector (`InterruptObject[]`, shared vectors chained through \
              `InterruptListEntry`) with their service routines; with a vector, that gate only",
        syntax: crate::ext::sched::IDT_SYNTAX, usage: Some("!idt [Vector]"),
        examples: ["!idt", "!idt 2"],
        run: crate::ext::sched::idt => crate::ext::sched::IdtShown,
    },
    command! {
        name: "!pte", aliases: [], id: "pte",
        summary: "an address's page-table entries, every level decoded",
        doc: "the PXE, PPE, PDE and PTE of an address in the address space every read uses: \
              where each entry is (through the page tables' self-map, `nt!MmPteBase` or the \
              fixed base before it was randomized, checked to point back at the root), what it \
              holds, and for a valid entry its frame and flags (`C`opy-on-write, `G`lobal, \
              `L`arge, `D`irty, `A`ccessed, `N`o-cache, write-`T`hrough, `U`ser or `K`ernel, \
              `W`ritable or `R`ead-only, `E`xecutable, `V`alid); a large page ends the walk at \
              its PDE or PPE. An entry that is not valid is read as the memory manager writes \
              it: a page file and offset, a transition frame, a prototype PTE, demand zero, \
              with its protection; on kernels that swizzle invalid entries (the L1TF \
              mitigation: `SwizzleBit` clear) the entry is XORed back with \
              `nt!MiInvalidPteMask` or `nt!MiState.Hardware.InvalidPteMask` first, and when \
              the mask cannot be read the result says so. An address in the self-map is taken \
              as an entry and the address it maps is shown",
        syntax: crate::ext::pte::PTE_SYNTAX, usage: Some("!pte Address"),
        examples: ["!pte nt", "!pte @rsp"],
        run: crate::ext::pte::pte => crate::ext::pte::PteShown,
    },
    command! {
        name: "!vtop", aliases: [], id: "vtop",
        summary: "a virtual address translated step by step from a directory base",
        doc: "walks the page tables from the root its first argument names (0: the address \
              space every read uses; otherwise a directory base's frame number, or a \
              directory base itself, each reading tried as a root whose self-map entry \
              points back at it): each entry's physical address, then the physical address \
              the virtual one translates to, or the level whose entry is not present",
        syntax: crate::ext::pte::VTOP_SYNTAX, usage: Some("!vtop PFN Address"),
        examples: ["!vtop 0 nt"],
        run: crate::ext::pte::vtop => crate::ext::pte::VtopShown,
    },
    command! {
        name: "!pcr", aliases: [], id: "pcr",
        summary: "a processor's control region: its PRCB, IRQL, IDT/GDT/TSS, threads and DPC queue",
        doc: "processor N's KPCR (the current processor's without N): where its KPRCB is, its \
              IRQL, the IDT, GDT and TSS bases, the current, next and idle threads, and the \
              DPCs queued on it",
        syntax: crate::ext::sched::SYNTAX, usage: Some("!pcr [N]"),
        examples: ["!pcr", "!pcr 1"],
        run: crate::ext::sched::pcr => crate::ext::sched::ProcessorBlock,
    },
    command! {
        name: "!prcb", aliases: [], id: "prcb",
        summary: "a processor's control block: IRQL, threads, interrupt count and times",
        doc: "processor N's KPRCB (the current processor's without N): its IRQL, the current, \
              next and idle threads, the interrupt count and the DPC, interrupt, kernel and \
              user times where the build's KPRCB has them",
        syntax: crate::ext::sched::SYNTAX, usage: Some("!prcb [N]"),
        examples: ["!prcb", "!prcb 2"],
        run: crate::ext::sched::prcb => crate::ext::sched::ProcessorBlock,
    },
    command! {
        name: "!deadlock", aliases: [], id: "deadlock",
        summary: "the wait-for graph: cycles, threads waiting behind them, pile-ups",
        doc: "the wait-for graph: mutant owners, executive resources (owners ↔ waiters), \
              fast/guarded mutexes, threads waited for; each cycle with its threads, objects \
              and wait times; threads waiting behind a cycle or piling up behind one thread",
        syntax: Syntax::NONE, usage: None,
        examples: ["!deadlock"],
        run: crate::ext::deadlock::command => crate::ext::deadlock::Deadlock,
    },
    command! {
        name: "!hangcheck", aliases: [], id: "hangcheck",
        summary: "the watcher's sample: long waits on locks, held resources, cycles, commit, pending NBLs",
        doc: "kdnet's own: the watcher's sample. Threads waiting on an ERESOURCE, mutant, fast \
              mutex or PnP lock (`PiEngineLock`, `IopDeviceTreeLock`, …) longer than SECONDS \
              (60), resources with exclusive waiters held that long, PnP locks whose holder is \
              itself stuck in a wait, wait-for cycles; also the commit-failure count and the \
              pending NBLs (every NBL walked; the watcher's samples look at 16 pages of NBLs \
              each, going on where the last one stopped, and read again the ones pending \
              then), which the watcher compares between samples. The resources waited \
              for are reached from the waiting threads, not from the resource list (read only \
              for a waiter that leads to none, as the notes then say)",
        syntax: crate::ext::hangcheck::SYNTAX, usage: None,
        examples: ["!hangcheck", "!hangcheck 0"],
        run: crate::ext::hangcheck::command => crate::ext::hangcheck::HangCheck,
    },
    command! {
        name: "!vm", aliases: [], id: "vm",
        summary: "page files, memory and commit counters, failed commit requests, per-process commit",
        doc: "page files, memory counters, pool usage, the commit breakdown, `Sum System Commit`, \
              `Total Private`, `Misc/Transient Commit`, committed and limit, the `N commit \
              requests have failed` banner (ChargeCommitmentFailures[0] + [1]) and the other \
              warnings, the per-process commit table (flag 1 leaves it out)",
        syntax: crate::ext::vm::SYNTAX, usage: None,
        examples: ["!vm", "!vm 1"],
        run: crate::ext::vm::run => crate::ext::vm::VirtualMemory,
    },
    command! {
        name: "!pool", aliases: [], id: "pool",
        summary: "the pool page around an address, its blocks and corruption",
        doc: "the page around ADDR: classic `_POOL_HEADER` chains, segment-heap LFH and VS \
              subsegments, big allocations, special pool; `*` marks the block holding ADDR; a \
              broken chain is reported at the exact header with what was expected and the 16 \
              bytes found; flag 2 shows only the block",
        syntax: crate::ext::pool::page::SYNTAX, usage: None,
        examples: ["!pool {pool}", "!pool {special}", "!pool {pool} 2"],
        run: crate::ext::pool::page::run => crate::ext::pool::page::PoolPage,
    },
    command! {
        name: "!poolused", aliases: [], id: "poolused",
        summary: "outstanding allocations and bytes per pool tag",
        doc: "outstanding allocations and bytes per tag from the tracker tables (global and \
              per-processor); flag 2 sorts by non-paged bytes, 4 by paged",
        syntax: crate::ext::pool::used::SYNTAX, usage: None,
        examples: ["!poolused", "!poolused 2", "!poolused 4 Ac*"],
        run: crate::ext::pool::used::run => crate::ext::pool::used::PoolUsed,
    },
    command! {
        name: "!poolfind", aliases: [], id: "poolfind",
        summary: "pool blocks with a tag",
        doc: "blocks with a tag: the big-page table, then the pool regions, searched on the \
              target (one request per present run) and checked header by header",
        syntax: crate::ext::pool::find::SYNTAX, usage: None,
        examples: ["!poolfind AcBf", "!poolfind AcBf 1"],
        run: crate::ext::pool::find::run => crate::ext::pool::find::PoolFind,
    },
    command! {
        name: "!ndiskd.pendingnbls", aliases: [], id: "ndiskd.pendingnbls",
        summary: "NBL pools and every NBL away from home with who holds it",
        doc: "NBL pools, freed NBLs, every NBL away from home and who holds it, `Found P pending \
              NBL(s) of T total NBL(s)`; with owner tracking off, how to turn it on",
        syntax: crate::ext::ndis::PENDINGNBLS, usage: None,
        examples: ["!ndiskd.pendingnbls"],
        run: crate::ext::ndis::pendingnbls => crate::ext::ndis::PendingNbls,
    },
    command! {
        name: "!ndiskd.miniport", aliases: ["!ndiskd.miniports", "!ndiskd.netadapter"],
        id: "ndiskd.miniport",
        summary: "the miniports; with a handle, its state block",
        doc: "the miniports; with a handle, its state block",
        syntax: crate::ext::ndis::MINIPORT, usage: None,
        examples: ["!ndiskd.miniport", "!ndiskd.miniport {miniport}"],
        run: crate::ext::ndis::miniport => crate::ext::ndis::Miniports,
    },
    command! {
        name: "!irp", aliases: [], id: "irp",
        summary: "an IRP: its header and every stack location, the current one marked",
        doc: "an IRP as WinDbg shows it: `Irp is active with N stacks M is current`, the MDL, \
              system buffer and thread, then every stack location (the highest first) with its \
              major and minor function names, flags, control (pending, Success/Error/Cancel), \
              device and file object, completion routine and context, the device's driver, the \
              routine symbolised and the arguments; `>` marks the current one. `!irp ADDR 1` \
              adds the header's details (flags decoded, IoStatus, cancel state, UserEvent, \
              UserIosb, the original file object). An IRP is checked before it is believed: \
              something whose Type is not 6 is no IRP (a freed one, another structure); a \
              StackCount or Size that cannot be right shows what they allow; a CurrentLocation \
              past StackCount + 1 says the IRP was completed more than once",
        syntax: crate::ext::io::IRP, usage: Some("!irp ADDR [1]"),
        examples: ["!irp {irp}", "!irp {irp} 1"],
        run: crate::ext::io::irp => crate::ext::io::IrpResult,
    },
    command! {
        name: "!irpfind", aliases: [], id: "irpfind",
        summary: "the IRPs in flight: every IRP-tagged block of non-paged pool and every thread's IRP list",
        doc: "the IRPs in flight: the IRP tag's blocks of non-paged pool (big allocations \
              included, searched on the target where it can) and every thread's IRP list, each \
              checked to be an IRP; a row per IRP with its thread, the current location's \
              major/minor function, device and driver (`-v`: every stack location too); `0 0 CRITERIA \
              VALUE` keeps those whose \
              `device`, `fileobject`, `thread`, `userevent` or `arg` is VALUE. An IRP on a \
              thread's list that is not an IRP any more is said so",
        syntax: crate::ext::io::IRPFIND, usage: Some("!irpfind [-v] [0 0 [device|fileobject|thread|userevent|arg] VALUE]"),
        examples: ["!irpfind", "!irpfind -v", "!irpfind 0 0 fileobject {file}"],
        run: crate::ext::io::irpfind => crate::ext::io::IrpFind,
    },
    command! {
        name: "!devobj", aliases: [], id: "devobj",
        summary: "a device object: its driver, flags, characteristics, extensions, the devices above and below",
        doc: "a device object (by address, by path `\\Device\\Name`, or by its name in \
              `\\Device`): its name and driver, current IRP, reference count, type, flags and \
              characteristics decoded, VPB, device and device-object extensions, the device \
              attached above and the one it is attached to, its device node",
        syntax: crate::ext::io::DEVOBJ, usage: Some("!devobj ADDR|\\Device\\NAME"),
        examples: ["!devobj {pdo}", "!devobj \\Device\\HarddiskVolume3"],
        run: crate::ext::io::devobj => crate::ext::io::DevObj,
    },
    command! {
        name: "!devstack", aliases: [], id: "devstack",
        summary: "the device stack a device is in, top first, with its device node",
        doc: "the device stack a device is in, from the top (AttachedDevice upwards) to the \
              bottom (each device-object extension's AttachedTo), `>` at the device asked about, \
              each with its driver, extension and name; the bottom's device node with its \
              instance path and service",
        syntax: crate::ext::io::DEVSTACK, usage: Some("!devstack ADDR|\\Device\\NAME"),
        examples: ["!devstack {pdo}"],
        run: crate::ext::io::devstack => crate::ext::io::DevStack,
    },
    command! {
        name: "!drvobj", aliases: [], id: "drvobj",
        summary: "a driver object: its devices, entry points, dispatch table and fast I/O routines",
        doc: "a driver object (by address, by path `\\Driver\\Name` or `\\FileSystem\\Name`, \
              or by its name in `\\Driver`): its devices; with FLAGS bit 2 its entry points and \
              the 28 dispatch routines symbolised (`nt!IopInvalidDeviceRequest` marks what it \
              does not handle); with bit 4 its fast I/O routines (7 by default)",
        syntax: crate::ext::io::DRVOBJ, usage: Some("!drvobj ADDR|\\Driver\\NAME [FLAGS]"),
        examples: ["!drvobj \\Driver\\cimfs", "!drvobj \\FileSystem\\Ntfs 7", "!drvobj pci 1"],
        run: crate::ext::io::drvobj => crate::ext::io::DrvObj,
    },
    command! {
        name: "!devnode", aliases: [], id: "devnode",
        summary: "the PnP tree's device nodes with their state, previous state and problem",
        doc: "device nodes: `!devnode 0 1` the whole tree from nt!IopRootDeviceNode, depth first \
              and indented; `!devnode 0 1 SERVICE` the nodes of one service; `!devnode ADDR` one \
              node (`ADDR 1` and its children); each with its PDO, instance path, service, state \
              and previous state by the build's own names, and problem code",
        syntax: crate::ext::io::DEVNODE, usage: Some("!devnode [ADDR [FLAGS [SERVICE]]]"),
        examples: ["!devnode 0 1", "!devnode 0 1 myeth1g", "!devnode {devnode}"],
        run: crate::ext::io::devnode => crate::ext::io::DevNodes,
    },
    command! {
        name: "!fileobj", aliases: [], id: "fileobj",
        summary: "a file object: its name, device, VPB, access, flags and file-system context",
        doc: "a file object: its name, device and driver, VPB, access and sharing, flags \
              decoded, FsContext/FsContext2, section object pointers, private cache map, current \
              byte offset, final status, the related file object",
        syntax: crate::ext::io::FILEOBJ, usage: None,
        examples: ["!fileobj {file}"],
        run: crate::ext::io::fileobj => crate::ext::io::FileObj,
    },
    command! {
        name: "!object", aliases: [], id: "object",
        summary: "an object by address or namespace path: its header, type, counts, name; a directory's entries",
        doc: "an object (by address, or by a path such as `\\Driver\\cimfs` resolved through \
              the namespace from nt!ObpRootDirectoryObject, symbolic links followed): its \
              header, type (the header's index decoded with nt!ObHeaderCookie where the build \
              has it), handle and pointer counts, name and directory; a directory's entries by \
              hash bucket; a symbolic link's target. A bad type index is said to be one",
        syntax: crate::ext::objects::OBJECT, usage: Some("!object ADDR|\\PATH"),
        examples: ["!object \\", "!object \\Driver", "!object \\GLOBAL??\\C:",
                   "!object \\FileSystem\\Filters"],
        run: crate::ext::objects::object => crate::ext::objects::ObjectResult,
    },
    command! {
        name: "!handle", aliases: [], id: "handle",
        summary: "a process's handle table: each handle's object, type and name",
        doc: "a process's handles (the current process, or PROCESS by EPROCESS or process id): \
              the table's levels walked from its TableCode; HANDLE 0 for all; FLAGS bit 2 (on \
              by default, `f` for all) reads each object's header, type and name (a file \
              object's file name); TYPE keeps one object type",
        syntax: crate::ext::objects::HANDLE, usage: Some("!handle [HANDLE [FLAGS [PROCESS [TYPE]]]]"),
        examples: ["!handle 0 f {pid}", "!handle {handle} f {pid}", "!handle 0 3 {pid} File"],
        run: crate::ext::objects::handle => crate::ext::objects::Handles,
    },
    command! {
        name: "!fltkd.frames", aliases: [], id: "fltkd.frames",
        summary: "the filter manager's frames, each with its filters and their instances",
        doc: "frames from fltmgr!FltGlobals.FrameList (fltmgr.sys's own symbols: a fltMgr.pdb along the symbol path, or the project's layout for the simulated FLTMGR.SYS), each with its altitude range, registered filters and their instances",
        syntax: crate::ext::fltkd::NONE, usage: None,
        examples: ["!fltkd.frames"],
        run: crate::ext::fltkd::frames => crate::ext::fltkd::Frames,
    },
    command! {
        name: "!fltkd.filters", aliases: [], id: "fltkd.filters",
        summary: "the filters by frame with altitude and instance count, as `fltmc filters` shows",
        doc: "the registered filters of every frame with their altitudes and instances, then a `fltmc filters` table: name, number of instances, altitude, frame",
        syntax: crate::ext::fltkd::NONE, usage: None,
        examples: ["!fltkd.filters"],
        run: crate::ext::fltkd::filters => crate::ext::fltkd::Frames,
    },
    command! {
        name: "!fltkd.volumes", aliases: [], id: "fltkd.volumes",
        summary: "the volumes the filter manager attached, each with its instances",
        doc: "the attached volumes of every frame, each with its device name and its instances (highest altitude first)",
        syntax: crate::ext::fltkd::NONE, usage: None,
        examples: ["!fltkd.volumes"],
        run: crate::ext::fltkd::volumes => crate::ext::fltkd::Frames,
    },
    command! {
        name: "!fltkd.instances", aliases: [], id: "fltkd.instances",
        summary: "every instance: filter, altitude and volume",
        doc: "every instance on every attached volume, with its filter, altitude and volume",
        syntax: crate::ext::fltkd::NONE, usage: None,
        examples: ["!fltkd.instances"],
        run: crate::ext::fltkd::instances => crate::ext::fltkd::Frames,
    },
    command! {
        name: "!fltkd.filter", aliases: [], id: "fltkd.filter",
        summary: "one filter: flags, frame, driver object, its instances",
        doc: "a filter (_FLT_FILTER): its name, altitude, flags, frame, driver object and every instance with its volume",
        syntax: crate::ext::fltkd::ADDR, usage: None,
        examples: ["!fltkd.filter {filter}"],
        run: crate::ext::fltkd::filter => crate::ext::fltkd::FilterDetail,
    },
    command! {
        name: "!fltkd.volume", aliases: [], id: "fltkd.volume",
        summary: "one volume: device, file system, its instances",
        doc: "a volume (_FLT_VOLUME): its device name, file system, flags, the filter manager's and the disk's devices, and its instances",
        syntax: crate::ext::fltkd::ADDR, usage: None,
        examples: ["!fltkd.volume {fltvolume}"],
        run: crate::ext::fltkd::volume => crate::ext::fltkd::VolumeDetail,
    },
    command! {
        name: "!fltkd.instance", aliases: [], id: "fltkd.instance",
        summary: "one instance: filter, volume, its callbacks symbolised",
        doc: "an instance (_FLT_INSTANCE): name, altitude, flags, filter and volume, and every operation it has callbacks for with its pre- and post-operation routines symbolised",
        syntax: crate::ext::fltkd::ADDR, usage: None,
        examples: ["!fltkd.instance {instance}"],
        run: crate::ext::fltkd::instance => crate::ext::fltkd::InstanceDetail,
    },
    command! {
        name: "!fltkd.irpctrl", aliases: [], id: "fltkd.irpctrl",
        summary: "an operation's IRP_CTRL: its IRP, callback data, which filter holds it and which have seen it",
        doc: "an IRP_CTRL: the operation, its IRP, device and file object, the completion-node stack, the callback data it holds (flags, thread, status, parameter block, target file and instance), the filter whose pre-operation pended it, and the filters whose post-operation is due",
        syntax: crate::ext::fltkd::ADDR, usage: None,
        examples: ["!fltkd.irpctrl {irpctrl}"],
        run: crate::ext::fltkd::irpctrl => crate::ext::fltkd::Operation,
    },
    command! {
        name: "!fltkd.cbd", aliases: [], id: "fltkd.cbd",
        summary: "callback data: its operation, status, and the filter holding it",
        doc: "a callback data (_FLT_CALLBACK_DATA) read through the IRP_CTRL that holds it: flags, thread, status, parameter block, target file and instance, whether a filter pended it and which, and the filters that have seen it; data no IRP_CTRL holds is said to be none",
        syntax: crate::ext::fltkd::ADDR, usage: None,
        examples: ["!fltkd.cbd {cbd}"],
        run: crate::ext::fltkd::cbd => crate::ext::fltkd::Operation,
    },
    command! {
        name: "!verifier", aliases: [], id: "verifier",
        summary: "Driver Verifier: its flags, the drivers it verifies; with 0x100 its IRP log",
        doc: "Driver Verifier's level (nt!MmVerifyDriverLevel) with each flag named, the drivers \
              it verifies (nt!MmVerifyDriverBuffer); `!verifier 100` adds its IRP log \
              (nt!IovIrpTraces): each IRP a verified driver issued, oldest first, with the \
              issuing thread, its KernelApcDisable and SpecialApcDisable, the IRQL and the \
              stack it was issued from, symbolised (a build whose symbols describe no log says so)",
        syntax: crate::ext::verifier::SYNTAX, usage: Some("!verifier [FLAGS]"),
        examples: ["!verifier", "!verifier 100"],
        run: crate::ext::verifier::run => crate::ext::verifier::VerifierResult,
    },
    command! {
        name: ".help", aliases: [], id: "help",
        summary: "the commands, or one command's usage, flags and examples",
        doc: "the commands and the script statements; `.help NAME`: one command's usage, \
              aliases, flags and examples",
        syntax: crate::cmds::help::SYNTAX, usage: None,
        examples: [".help", ".help lm", ".help !locks"],
        run: crate::cmds::help::run => crate::cmds::help::Help,
    },
];

/// The command `verb` names, if any.
pub fn find(verb: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.answers_to(verb))
}

/// Every name and alias (for completion).
pub fn names() -> impl Iterator<Item = &'static str> {
    COMMANDS
        .iter()
        .flat_map(|c| std::iter::once(c.name).chain(c.aliases.iter().copied()))
}

/// Runs `verb args` through the registry.
pub fn run(e: &mut Engine, verb: &str, args: &str) -> Result<Output, CmdError> {
    let c = find(verb).ok_or_else(|| CmdError::Unknown(verb.to_string()))?;
    let parsed = c.syntax.parse(c.name, args)?;
    (c.handler)(e, &verb.to_ascii_lowercase(), &parsed)
}

/// The version of the published JSON schemas (`docs/schema/v3/`); it changes when a result
/// changes in a way a consumer could trip on (a member removed, renamed or retyped).
pub const SCHEMA_VERSION: u32 = 3;

/// Makes every object schema closed: a member a result carries is a member its schema names.
fn close(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), false.into());
            }
            m.values_mut().for_each(close);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(close),
        _ => {}
    }
}

fn finish(mut s: Schema, id: &str, title: &str, description: &str) -> serde_json::Value {
    s.insert(
        "$id".into(),
        format!("urn:kdnet:schema:v{SCHEMA_VERSION}:{id}").into(),
    );
    s.insert("title".into(), title.into());
    s.insert("description".into(), description.into());
    let mut v = s.to_value();
    close(&mut v);
    v
}

/// Every published schema: (file name, schema). One per command's result (`<id>.json`), and
/// `line.json` for the object each command's run is (its `result` is the command's result).
pub fn schemas() -> Vec<(String, serde_json::Value)> {
    let generator = || schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut out: Vec<(String, serde_json::Value)> = COMMANDS
        .iter()
        .map(|c| {
            let s = (c.schema)(&mut generator());
            (
                format!("{}.json", c.id),
                finish(s, c.id, &c.usage(), c.summary),
            )
        })
        .collect();
    let line = generator().into_root_schema_for::<crate::script::Line>();
    out.push((
        "line.json".into(),
        finish(
            line,
            "line",
            "one line of --json output",
            "what the line is (a command's run, an .echo, a .snapshot, a script step's \
             error), the command, its result (the command's own schema), its error, whether \
             the result is whole and what it cost",
        ),
    ));
    out
}
