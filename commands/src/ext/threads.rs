//! Hang helpers over threads and processes: `!thread`, `!process`, `!stacks`, `!running`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::engine::{CmdError, Engine, Output, addr};
use kdnet_model::nt::Kernel;
use kdnet_model::nt::procs::{Process, Thread};
use kdnet_model::nt::threads::blocker;

/// `Ticks: N (d:hh:mm:ss.mmm)`.
pub fn ticks_text(ticks: u64, increment: u64) -> String {
    let ms = ticks.saturating_mul(increment) / 10_000;
    let (s, ms) = (ms / 1000, ms % 1000);
    format!(
        "{}:{:02}:{:02}:{:02}.{:03}",
        s / 86_400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms
    )
}

fn hex_addr(a: u64) -> String {
    format!("{a:016x}")
}

/// The process name for an EPROCESS, for `Image:` lines (`?` when it cannot be read, and the
/// result says so).
fn process_name(k: &mut Kernel, eprocess: u64) -> String {
    match k.process(eprocess) {
        Ok(p) => p.name,
        Err(e) => {
            k.note_incomplete(format!("process {eprocess:x} is unreadable: {e}"));
            "?".into()
        }
    }
}

/// `!thread`'s block for one thread, and its JSON.
pub fn thread_block(
    e: &mut Engine,
    t: &Thread,
    with_stack: bool,
) -> Result<(String, Value), CmdError> {
    let k = &mut e.kernel;
    let (_, inc) = k.clock().unwrap_or((0, 156_250));
    let mut s = format!(
        "THREAD {}  Cid {:04x}.{:04x}  Teb: {} Win32Thread: {} ",
        hex_addr(t.ethread),
        t.pid,
        t.tid,
        hex_addr(t.teb),
        hex_addr(t.win32_thread)
    );
    match t.state {
        2 => s.push_str(&format!("RUNNING on processor {}\n", t.processor)),
        5 => s.push_str(&format!(
            "WAIT: ({}) {} {}\n",
            t.wait_reason_name,
            if t.wait_mode == 0 {
                "KernelMode"
            } else {
                "UserMode"
            },
            if t.alertable {
                "Alertable"
            } else {
                "Non-Alertable"
            }
        )),
        _ => s.push_str(&format!(
            "{} on processor {}\n",
            t.state_name.to_ascii_uppercase(),
            t.processor
        )),
    }
    let mut waits = Vec::new();
    for w in &t.waits {
        let extra = match (w.type_code, w.owner) {
            (2, Some(o)) => format!("-owning thread {}", hex_addr(o)),
            (5, _) => {
                let limit = k
                    .nt()
                    .ok()
                    .and_then(|nt| nt.offset("_KSEMAPHORE", "Limit").ok())
                    .map(|o| k.mem.u32(w.object + o));
                match limit {
                    Some(Ok(l)) => format!(" Limit {l:#x}"),
                    Some(Err(e)) => {
                        k.note_incomplete(format!(
                            "the limit of semaphore {:x} is unreadable: {e}",
                            w.object
                        ));
                        " Limit ?".into()
                    }
                    None => String::new(),
                }
            }
            _ => String::new(),
        };
        s.push_str(&format!(
            "    {}  {}{}\n",
            hex_addr(w.object),
            w.type_name,
            extra
        ));
        waits.push(json!({
            "object": w.object,
            "type": w.type_name,
            "type_code": w.type_code,
            "owner": w.owner,
        }));
    }
    if !t.irps.is_empty() {
        s.push_str("IRP List:\n");
        for irp in &t.irps {
            let b = match k.mem.kread(*irp, 0x18) {
                Ok(b) => b,
                Err(e) => {
                    k.note_incomplete(format!("IRP {irp:x} is unreadable: {e}"));
                    s.push_str(&format!("    {}: (unreadable: {e})\n", hex_addr(*irp)));
                    continue;
                }
            };
            let g16 = |o: usize| {
                b.get(o..o + 2)
                    .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]))
            };
            let g32 = |o: usize| {
                b.get(o..o + 4)
                    .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            };
            let g64 = |o: usize| {
                b.get(o..o + 8)
                    .map_or(0, |x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])))
            };
            s.push_str(&format!(
                "    {}: ({:04x},{:04x}) Flags: {:08x}  Mdl: {}\n",
                hex_addr(*irp),
                g16(0),
                g16(2),
                g32(0x10),
                hex_addr(g64(8))
            ));
        }
    }
    let owner = process_name(k, t.process);
    s.push_str(&format!(
        "Owning Process            {}       Image:         {}\n",
        hex_addr(t.process),
        owner
    ));
    match t.attached_process {
        Some(p) => {
            let name = process_name(k, p);
            s.push_str(&format!(
                "Attached Process          {}       Image:         {}\n",
                hex_addr(p),
                name
            ));
        }
        None => s.push_str("Attached Process          N/A            Image:         N/A\n"),
    }
    match t.wait_ticks {
        Some(ticks) => s.push_str(&format!(
            "Wait Start TickCount      {}           Ticks: {} ({})\n",
            t.wait_tick,
            ticks,
            ticks_text(ticks, inc)
        )),
        None => s.push_str(&format!("Wait Start TickCount      {}\n", t.wait_tick)),
    }
    s.push_str(&format!(
        "Context Switch Count      {}\n",
        t.context_switches
    ));
    s.push_str(&format!(
        "UserTime                  {}\nKernelTime                {}\n",
        ticks_text(t.user_time, inc),
        ticks_text(t.kernel_time, inc)
    ));
    let win32 = k.symbolize(t.win32_start_address);
    let start = k.symbolize(t.start_address);
    s.push_str(&format!(
        "Win32 Start Address {} (0x{:x})\nStart Address {} (0x{:x})\n",
        win32, t.win32_start_address, start, t.start_address
    ));
    s.push_str(&format!(
        "Stack Init {:x} Current {:x}\nBase {:x} Limit {:x} Call 0000000000000000\n",
        t.initial_stack, t.kernel_stack, t.stack_base, t.stack_limit
    ));
    s.push_str(&format!(
        "Priority {} BasePriority {}\n",
        t.priority, t.base_priority
    ));
    let mut frames = Vec::new();
    let mut stack_note = None;
    let mut blocked_in = None;
    if with_stack {
        let st = e.kernel.stack_of(t)?;
        s.push_str("Child-SP          RetAddr               Call Site\n");
        for f in &st.frames {
            s.push_str(&format!(
                "{} {}     {}\n",
                addr(f.child_sp),
                addr(f.return_address),
                f.call_site
            ));
            frames.push(json!({
                "child_sp": f.child_sp,
                "return_address": f.return_address,
                "call_site": f.call_site,
            }));
        }
        if let Some(n) = &st.note {
            s.push_str(&format!("({n})\n"));
        }
        e.kernel.note_stack(t, &st);
        blocked_in = blocker(&st);
        stack_note = st.note;
    }
    s.push('\n');
    let j = json!({
        "thread": t.ethread,
        "process": t.process,
        "image": owner,
        "pid": t.pid,
        "tid": t.tid,
        "state": t.state_name,
        "processor": t.processor,
        "wait_reason": (t.state == 5).then_some(t.wait_reason_name.clone()),
        "wait_mode": (t.state == 5).then_some(if t.wait_mode == 0 { "KernelMode" } else { "UserMode" }),
        "alertable": t.alertable,
        "wait_start_tick": t.wait_tick,
        "wait_ticks": t.wait_ticks,
        "wait_seconds": t.wait_seconds,
        "waits": waits,
        "irps": t.irps,
        "attached_process": t.attached_process,
        "start_address": t.start_address,
        "win32_start_address": t.win32_start_address,
        "priority": t.priority,
        "base_priority": t.base_priority,
        "context_switches": t.context_switches,
        "stack_resident": t.stack_resident,
        "frames": frames,
        "stack_note": stack_note,
        "blocker": blocked_in,
    });
    Ok((s, j))
}

/// The current thread of the engine's processor.
fn current_thread(e: &mut Engine) -> Result<u64, CmdError> {
    let n = e.processor;
    e.kernel
        .current_thread(n)?
        .ok_or_else(|| CmdError::Usage(format!("processor {n} has no current thread")))
}

/// `!thread [ADDR] [FLAGS]`.
pub fn thread_command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let mut parts = args.split_whitespace();
    let et = match parts.next() {
        Some(a) if a != "-1" => e.eval(a)?,
        _ => current_thread(e)?,
    };
    let flags = match parts.next() {
        Some(f) => e.eval(f)?,
        None => 0x1f,
    };
    let t = e.kernel.thread(et)?;
    let (text, json) = thread_block(e, &t, flags & 0x6 != 0 || flags == 0x1f)?;
    Ok(Output { text, json })
}

/// Threads (pid, tid, ETHREAD) that share one stack.
type Group = (Vec<String>, Vec<(u64, u64, u64)>);

fn process_lines(k: &mut Kernel, p: &Process) -> String {
    let session = if p.session == 0 {
        "none".to_string()
    } else {
        match k.mem.u32(p.session + 8) {
            Ok(s) => format!("{s}"),
            Err(e) => {
                k.note_incomplete(format!(
                    "the session of process {:x} is unreadable: {e}",
                    p.eprocess
                ));
                "?".into()
            }
        }
    };
    format!(
        "PROCESS {}\n    SessionId: {}  Cid: {:04x}    Peb: {:08x}  ParentCid: {:04x}\n    DirBase: {:08x}  ObjectTable: {}  HandleCount: <Data Not Accessible>\n    Image: {}\n",
        hex_addr(p.eprocess),
        session,
        p.pid,
        p.peb,
        p.parent,
        p.dtb,
        hex_addr(p.object_table),
        p.name
    )
}

fn process_json(p: &Process) -> Value {
    json!({
        "process": p.eprocess,
        "pid": p.pid,
        "parent_pid": p.parent,
        "image": p.name,
        "dir_base": p.dtb,
        "peb": p.peb,
        "object_table": p.object_table,
    })
}

/// `!process [0|ADDR] [FLAGS] [IMAGE]`: 0 0 lists processes; flags with bit 1/2 add threads
/// (and their stacks).
pub fn process_command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let parts: Vec<&str> = args.split_whitespace().collect();
    let which = match parts.first() {
        Some(a) => e.eval(a)?,
        None => 0,
    };
    let flags = match parts.get(1) {
        Some(f) => e.eval(f)?,
        None => 0,
    };
    let image = parts.get(2).map(|s| s.to_ascii_lowercase());
    let mut text = String::new();
    let mut list = Vec::new();
    let procs: Vec<Process> = if which == 0 {
        text.push_str("**** NT ACTIVE PROCESS DUMP ****\n");
        let (p, note) = e.kernel.processes()?;
        if let Some(n) = note {
            text.push_str(&format!("NOTE: {n}\n"));
            e.kernel.note_incomplete(format!("process list: {n}"));
        }
        p
    } else {
        vec![e.kernel.process(which)?]
    };
    for p in procs {
        if let Some(img) = &image
            && !p.name.to_ascii_lowercase().starts_with(img.as_str())
        {
            continue;
        }
        text.push_str(&process_lines(&mut e.kernel, &p));
        let mut pj = process_json(&p);
        if flags & 0x6 != 0 {
            text.push('\n');
            let (threads, note) = e.kernel.threads_of(p.eprocess)?;
            let mut tj = Vec::new();
            for t in threads {
                let (tt, j) = thread_block(e, &t, flags & 0x4 != 0)?;
                for line in tt.lines() {
                    text.push_str("        ");
                    text.push_str(line);
                    text.push('\n');
                }
                tj.push(j);
            }
            if let Some(n) = note {
                text.push_str(&format!("        NOTE: {n}\n"));
                e.kernel
                    .note_incomplete(format!("threads of {} ({:x}): {n}", p.name, p.eprocess));
            }
            pj["threads"] = json!(tj);
        }
        text.push('\n');
        list.push(pj);
    }
    Ok(Output {
        text,
        json: json!({ "processes": list }),
    })
}

/// `!stacks [0|1|2] [FILTER]`: every thread with what it is blocked in, then the threads
/// grouped by identical stacks.
pub fn stacks_command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let mut detail = 0u64;
    let mut filter: Option<String> = None;
    for a in args.split_whitespace() {
        match a {
            "0" | "1" | "2" => detail = a.parse().unwrap_or(0),
            f => filter = Some(f.to_ascii_lowercase()),
        }
    }
    let (all, notes) = e.kernel.all_threads()?;
    let mut text = String::from("Proc.Thread  .Thread  Ticks   ThreadState Blocker\n");
    let mut threads_json = Vec::new();
    let mut groups: BTreeMap<Vec<String>, Vec<(u64, u64, u64)>> = BTreeMap::new();
    let mut shown = 0usize;
    let mut paged_out = 0usize;
    let mut notes = notes;
    // Threads whose stacks stop early: (pid, tid, why) of the first, and how many.
    let mut partial: Option<(u64, u64, String)> = None;
    let mut partial_count = 0usize;
    for (p, threads) in &all {
        let mut header_done = false;
        for t in threads {
            let st = match e.kernel.stack_of(t) {
                Ok(st) => st,
                Err(err) => {
                    notes.push(format!(
                        "thread {:x} ({:x}.{:x}): stack unreadable: {err}",
                        t.ethread, t.pid, t.tid
                    ));
                    e.kernel.note_incomplete(format!(
                        "the stack of thread {:x} is unreadable: {err}",
                        t.ethread
                    ));
                    continue;
                }
            };
            if !st.complete {
                partial_count += 1;
                if partial.is_none() {
                    partial = Some((
                        t.pid,
                        t.tid,
                        st.note.clone().unwrap_or_else(|| "the walk ended".into()),
                    ));
                }
            }
            let sites: Vec<String> = st.frames.iter().map(|f| f.call_site.clone()).collect();
            if let Some(f) = &filter
                && !sites
                    .iter()
                    .any(|s| s.to_ascii_lowercase().contains(f.as_str()))
            {
                continue;
            }
            if !t.stack_resident {
                paged_out += 1;
                if detail == 0 {
                    continue;
                }
            }
            if !header_done {
                text.push_str(&format!(
                    "                            [{} {}]\n",
                    hex_addr(p.eprocess),
                    p.name
                ));
                header_done = true;
            }
            let state = match t.state {
                5 => "Blocked",
                2 => "RUNNING",
                1 => "READY",
                _ => t.state_name.as_str(),
            };
            let block = if t.stack_resident {
                blocker(&st).unwrap_or_default()
            } else {
                "Stack paged out".into()
            };
            text.push_str(&format!(
                "{:4x}.{:06x}  {} {:07x} {:<11} {}\n",
                t.pid,
                t.tid,
                hex_addr(t.ethread),
                t.wait_ticks.unwrap_or(0),
                state,
                block
            ));
            if detail == 2 {
                for s in &sites {
                    text.push_str(&format!("                                        {s}\n"));
                }
            }
            shown += 1;
            groups
                .entry(sites.clone())
                .or_default()
                .push((t.pid, t.tid, t.ethread));
            threads_json.push(json!({
                "pid": t.pid,
                "tid": t.tid,
                "thread": t.ethread,
                "process": p.eprocess,
                "image": p.name,
                "state": t.state_name,
                "wait_reason": (t.state == 5).then_some(t.wait_reason_name.clone()),
                "wait_ticks": t.wait_ticks,
                "blocker": blocker(&st),
                "frames": sites,
                "stack_resident": t.stack_resident,
                "stack_complete": st.complete,
                "stack_note": st.note,
            }));
        }
    }
    // Identical stacks, most common first.
    let mut ordered: Vec<Group> = groups.into_iter().collect();
    ordered.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    text.push_str(&format!(
        "\nThreads Processed: {shown}\n\n{} distinct stacks:\n",
        ordered.len()
    ));
    let mut groups_json = Vec::new();
    for (sites, members) in &ordered {
        let ids: Vec<String> = members
            .iter()
            .map(|(pid, tid, _)| format!("{pid:x}.{tid:x}"))
            .collect();
        text.push_str(&format!(
            "\n{} thread(s): {}\n",
            members.len(),
            ids.join(" ")
        ));
        for s in sites {
            text.push_str(&format!("    {s}\n"));
        }
        groups_json.push(json!({
            "count": members.len(),
            "threads": members.iter().map(|m| m.2).collect::<Vec<_>>(),
            "frames": sites,
        }));
    }
    if let Some((pid, tid, why)) = &partial {
        let n = format!(
            "{partial_count} thread stack(s) stop early (the first, {pid:x}.{tid:x}: {why})"
        );
        e.kernel.note_incomplete(n.clone());
        notes.push(n);
    }
    for n in &notes {
        text.push_str(&format!("NOTE: {n}\n"));
    }
    Ok(Output {
        text,
        json: json!({
            "threads": threads_json,
            "groups": groups_json,
            "paged_out": paged_out,
            "notes": notes,
        }),
    })
}

/// `!running [-t]`: what every processor runs.
pub fn running_command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let with_stacks = args.split_whitespace().any(|a| a == "-t");
    let cpus = e.kernel.processors()?;
    let mut system = 0u64;
    let mut idle = 0u64;
    for c in &cpus {
        if c.number < 64 {
            system |= 1 << c.number;
            if c.current == c.idle {
                idle |= 1 << c.number;
            }
        }
    }
    let mut text = format!(
        "System Processors:  ({system:016x})\n  Idle Processors:  ({idle:016x})\n\n       Prcbs             Current         (pri) Next            (pri) Idle\n"
    );
    let mut list = Vec::new();
    for c in &cpus {
        // Only the priority byte of each thread.
        let pri = |k: &mut Kernel, t: u64| -> Option<i64> {
            let off = k.nt().ok()?.offset("_KTHREAD", "Priority").ok()?;
            (t != 0)
                .then(|| k.mem.u8(t + off).ok().map(|p| i64::from(p as i8)))
                .flatten()
        };
        let cur_pri = pri(&mut e.kernel, c.current);
        let next_pri = pri(&mut e.kernel, c.next);
        text.push_str(&format!(
            "  {:<3}  {}  {} ({:>2}) {} {} {}\n",
            c.number,
            hex_addr(c.prcb),
            hex_addr(c.current),
            cur_pri.unwrap_or(0),
            if c.next == 0 {
                "                ".to_string()
            } else {
                hex_addr(c.next)
            },
            if c.next == 0 {
                "    ".to_string()
            } else {
                format!("({:>2})", next_pri.unwrap_or(0))
            },
            hex_addr(c.idle)
        ));
        let mut frames = Vec::new();
        if with_stacks && c.current != c.idle {
            match e.kernel.thread(c.current) {
                Err(err) => {
                    e.kernel.note_incomplete(format!(
                        "the thread running on processor {} ({:x}) is unreadable: {err}",
                        c.number, c.current
                    ));
                    text.push_str(&format!("       (thread unreadable: {err})\n"));
                }
                Ok(t) => {
                    let st = e.kernel.stack_of(&t)?;
                    e.kernel.note_stack(&t, &st);
                    for f in &st.frames {
                        text.push_str(&format!(
                            "       {} {}     {}\n",
                            addr(f.child_sp),
                            addr(f.return_address),
                            f.call_site
                        ));
                        frames.push(f.call_site.clone());
                    }
                    if let Some(n) = &st.note {
                        text.push_str(&format!("       ({n})\n"));
                    }
                }
            }
            text.push('\n');
        }
        list.push(json!({
            "processor": c.number,
            "prcb": c.prcb,
            "current": c.current,
            "next": (c.next != 0).then_some(c.next),
            "idle_thread": c.idle,
            "idle": c.current == c.idle,
            "frames": frames,
        }));
    }
    Ok(Output {
        text,
        json: json!({ "system_processors": system, "idle_processors": idle, "processors": list }),
    })
}
