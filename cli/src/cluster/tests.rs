use super::*;

#[test]
fn refusals_are_bad_input_and_failures_are_infrastructure() {
    let api = |code: u16| ClusterError::Api {
        what: "pods \"x\"".into(),
        code,
        reason: String::new(),
        message: String::new(),
    };
    assert_eq!(api(404).into_cli().exit_code(), 2);
    assert_eq!(api(422).into_cli().exit_code(), 2);
    assert_eq!(api(401).into_cli().exit_code(), 3, "a lab whose token is refused is broken, not asked wrongly");
    assert_eq!(api(500).into_cli().exit_code(), 3);
    assert_eq!(ClusterError::Kind(UnknownKind("x".into())).into_cli().exit_code(), 2);
    let no_config = ClusterError::NoKubeconfig { lab: "l".into(), path: "/x/kubeconfig".into() };
    assert!(no_config.to_string().contains("/x/kubeconfig"));
}

#[test]
fn the_lab_kubeconfig_is_used_unless_one_is_given() {
    let args = ClientArgs { lab: LabSelector::default(), kubeconfig: Some("/k".into()), namespace: None };
    assert_eq!(kubeconfig_path(&args).unwrap(), PathBuf::from("/k"));
}
