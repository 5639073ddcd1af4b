//! The `#[task]` mistakes each point at the token to fix; see `tests/ui`.

#[test]
fn macro_errors_point_at_the_mistake() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
