// Mocha reporter: the spec reporter's output, then one last line "N passed, N failed"
// (", N skipped" when any were skipped) that CI reads.
import * as Mocha from 'mocha';

class CountingReporter extends Mocha.reporters.Spec {
  private passed = 0;
  private failed = 0;
  private skipped = 0;

  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    runner.on(Mocha.Runner.constants.EVENT_TEST_PASS, () => { this.passed++; });
    runner.on(Mocha.Runner.constants.EVENT_TEST_FAIL, () => { this.failed++; });
    runner.on(Mocha.Runner.constants.EVENT_TEST_PENDING, () => { this.skipped++; });
  }

  // Spec registers `this.epilogue` for the end of the run, so this override prints last.
  override epilogue(): void {
    super.epilogue();
    const skipped = this.skipped ? `, ${this.skipped} skipped` : '';
    console.log(`${this.passed} passed, ${this.failed} failed${skipped}`);
  }
}

export = CountingReporter;
