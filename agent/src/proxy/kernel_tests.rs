//! The netlink batch on this host's kernel, each test in network namespaces of its own threads (root and
//! the `nft` binary, which reads the result back and writes the reference). The reference for what the
//! batch must make is nft itself: the same operations as an `nft -f` script give the same `nft list`.

use std::io::Write;
use std::process::{Command, Stdio};

use super::kernel::NftNetlink;
use super::nft::{list_table, Nft, NftError};
use super::render;
use super::ruleset::{diff, script, Op, Rule, TABLE};
use super::tests::every_shape;

/// `f` on a thread in a fresh network namespace (the thread's own: nft run from it acts there too).
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    })
    .join()
    .expect("test thread")
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default().as_bytes()).map_err(|e| e.to_string())?;
    drop(pipe);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn listing() -> String {
    nft(&["list", "table", "ip", TABLE], None).unwrap_or_else(|e| panic!("nft list: {e}"))
}

#[test]
fn the_batch_writes_the_table_nft_writes_for_the_same_script() {
    testbed_test_support::require_root!();
    let ops = diff(None, &render::render(&every_shape()));
    let text = script(&ops);
    let by_nft = in_new_netns(move || {
        nft(&["-f", "-"], Some(&text)).unwrap_or_else(|e| panic!("nft -f: {e}"));
        listing()
    });
    let want = render::render(&every_shape());
    let (by_netlink, drift) = in_new_netns(move || {
        let mut kernel = NftNetlink::new().expect("socket");
        let g = kernel.generation().expect("generation");
        assert_eq!(kernel.apply(&ops, Some(g)).expect("batch"), Some(g + 1));
        assert_eq!(kernel.generation().expect("generation"), g + 1, "one commit, one generation");
        let read = list_table().expect("read back").expect("the table");
        (listing(), diff(Some(&read), &want))
    });
    assert_eq!(by_netlink, by_nft, "nft list of the batch's table against nft's own");
    assert_eq!(drift, [], "read back, the table is the rendered one");
    assert!(by_netlink.contains("numgen random mod 2 vmap { 0 : goto endpoint-"), "{by_netlink}");
}

#[test]
fn a_refused_op_is_named_and_nothing_of_the_batch_applies() {
    testbed_test_support::require_root!();
    let rule = Rule::new("jump nowhere".into());
    let ops =
        vec![Op::AddTable, Op::AddChain { name: "a".into(), base: None }, Op::AddRule { chain: "a".into(), rule }];
    let (err, table) = in_new_netns(move || {
        let mut kernel = NftNetlink::new().expect("socket");
        let g = kernel.generation().expect("generation");
        (kernel.apply(&ops, Some(g)).expect_err("a jump to a missing chain"), list_table().expect("read"))
    });
    println!("{err}");
    match &err {
        NftError::Refused { op, reason } => {
            assert!(op.starts_with("add rule ip testbed-proxy a jump nowhere comment"), "{op}");
            assert!(reason.contains("No such file or directory"), "{reason}");
        }
        other => panic!("expected a refusal naming the op, got {other:?}"),
    }
    assert_eq!(table, None, "the table of the same batch was not created");
}

#[test]
fn a_batch_planned_before_someone_elses_commit_is_refused_whole() {
    testbed_test_support::require_root!();
    let (err, listing_after) = in_new_netns(|| {
        let mut kernel = NftNetlink::new().expect("socket");
        let g = kernel.generation().expect("generation");
        nft(&["add", "table", "ip", "someone-else"], None).expect("nft add table");
        let err = kernel.apply(&[Op::AddTable], Some(g)).expect_err("the generation moved");
        (err, nft(&["list", "tables"], None).expect("nft list tables"))
    });
    assert!(matches!(err, NftError::GenerationMoved(_)), "{err:?}");
    assert_eq!(listing_after.trim(), "table ip someone-else", "nothing of the batch applied");
}

#[test]
fn a_batch_the_kernel_answers_only_in_part_is_a_refusal_not_a_hang() {
    use super::nfnl::{Batch, NfnlError, NfnlSocket, NLM_F_CREATE};
    testbed_test_support::require_root!();
    // The kernel refuses the batch at the truncated message and acks nothing after it: the add table,
    // which asks for the ack, is never answered. A proxy that waited for that ack never returned (on 6.1 guests
    // a first run that loaded modules answered the same way).
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let mut sock = NfnlSocket::new().expect("socket");
        let mut batch = Batch::new(None);
        batch.truncated_message(0);
        batch.message(0, NLM_F_CREATE, libc::AF_INET as u8, 1, |a| {
            a.str(1, TABLE);
        });
        let _ = done.send(sock.commit(batch));
    });
    match outcome.recv_timeout(std::time::Duration::from_secs(10)) {
        // Kernels differ in what they say about the truncated message (6.18: nothing); either way the
        // commit is an error, not Ok and not a wait.
        Ok(Err(NfnlError::Refused { owner: 0, errno, .. })) => assert_eq!(errno, libc::EINVAL),
        Ok(Err(NfnlError::NoAnswer { .. })) => {}
        Ok(other) => panic!("a refusal or no answer, got {other:?}"),
        Err(_) => panic!("no outcome within 10 s: the commit waits for an ack the kernel never sends"),
    }
    let tables = in_new_netns(|| nft(&["list", "tables"], None).expect("nft list tables"));
    assert!(!tables.contains(TABLE), "a fresh namespace has no table: {tables}");
}
