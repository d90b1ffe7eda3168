/**
 * Dockerfile builds: options, progress reports, the parsed Dockerfile, and the errors a build throws.
 * @module
 */
import { InvalidArgumentError, NacelleError } from '../errors';
import type { Digest } from '../oci/digest';

/** Options of `rt.images.build(contextDir, options)`. */
export interface BuildOptions {
  /** The Dockerfile: a path relative to the context directory, or absolute. Default `Dockerfile`. */
  dockerfile?: string;
  /** Tag(s) for the built image, e.g. `app:dev`. */
  tag?: string | readonly string[];
  /** Values for `ARG` instructions (Docker's `--build-arg`). */
  buildArgs?: Readonly<Record<string, string>>;
  /** The stage to build (Docker's `--target`); default the last stage. Only the stages it needs are built. */
  target?: string;
  /** Build every step again instead of reusing cached results (the results still fill the cache). */
  noCache?: boolean;
  /** Called for each step (cached or built), for RUN output, and for warnings. */
  onProgress?: (event: BuildProgress) => void;
  /** Network of RUN steps when the step gives no `--network`: `host` (default, like Docker's RUN with network) or `none`. */
  network?: 'host' | 'none';
  /** Creation time (ISO 8601) recorded in history and config of built steps; default now. Fix it for reproducible digests. */
  created?: string;
}

/** Where a step is in the build: its stage, its number and the instruction as the Dockerfile has it. */
export interface BuildStepInfo {
  /** The stage's name (`AS name`) or its index as a string. */
  stage: string;
  /** 1-based number of the step among all steps of the stages being built. */
  step: number;
  /** Number of steps of the stages being built. */
  steps: number;
  /** 1-based line of the instruction in the Dockerfile. */
  line: number;
  /** The instruction, variables expanded (what history's `created_by` records). */
  instruction: string;
}

/** One report from a build. */
export type BuildProgress =
  | (BuildStepInfo & {
      /** A step finished: `cached` (reused) or `built` (run now). */
      kind: 'step';
      /** Whether the step came from the cache or ran. */
      status: 'cached' | 'built';
      /** The image after the step (manifest digest); null after `FROM scratch`. */
      image: Digest | null;
      /** Time the step took. */
      ms: number;
    })
  | (BuildStepInfo & {
      /** Output of a RUN step. */
      kind: 'output';
      /** The stream it came from. */
      stream: 'stdout' | 'stderr';
      /** The bytes, as text. */
      data: string;
    })
  | {
      /** Something worth knowing that does not stop the build (an unused build arg). */
      kind: 'warning';
      /** What happened. */
      message: string;
      /** The line it concerns, when there is one. */
      line?: number;
    };

/** One instruction of a Dockerfile, as written (variables not yet expanded). */
export interface Instruction {
  /** The keyword in upper case: `RUN`, `COPY`, … */
  keyword: string;
  /** `--name=value` flags before the arguments (`--chown=1:1`); a flag without `=` has the value `true`. */
  flags: Record<string, string | true>;
  /** The arguments after the flags, continuation lines joined, not expanded. */
  args: string;
  /** The arguments as a list when they are a JSON array of strings (exec form). */
  json?: string[];
  /** 1-based line where the instruction starts. */
  line: number;
  /** 1-based line where it ends (after continuation lines). */
  endLine: number;
  /** 1-based column where the arguments start on the first line. */
  column: number;
  /** The whole instruction, continuation lines joined. */
  original: string;
}

/** A parsed Dockerfile. */
export interface Dockerfile {
  /** Parser directives from the top of the file (`escape`, `syntax`, `check`), by lower-case name. */
  directives: Record<string, string>;
  /** The escape character (`\` or a backtick). */
  escape: '\\' | '`';
  /** Every instruction, in order. */
  instructions: Instruction[];
}

/** What makes a {@link DockerfileError}. */
export interface DockerfileErrorOptions {
  /** 1-based line. */
  line: number;
  /** 1-based column, when known. */
  column?: number;
  /** The error code (default `ERR_DOCKERFILE`). */
  code?: string;
  /** The underlying error. */
  cause?: unknown;
}

/**
 * The Dockerfile is wrong (syntax, an unknown instruction, a bad flag, a stage that does not
 * exist, a required variable without a value): the message and `line`/`column` say where.
 */
export class DockerfileError extends InvalidArgumentError {
  /** 1-based line of the problem. */
  readonly line: number;
  /** 1-based column, when known. */
  readonly column: number | undefined;

  /**
   * @param message - what is wrong (the location is added in front)
   * @param options - where, and the code
   */
  constructor(message: string, options: DockerfileErrorOptions) {
    const where = options.column === undefined ? `line ${options.line}` : `line ${options.line}, column ${options.column}`;
    super(`Dockerfile ${where}: ${message}`, { code: options.code ?? 'ERR_DOCKERFILE', ...(options.cause === undefined ? {} : { cause: options.cause }) });
    this.line = options.line;
    this.column = options.column;
  }
}

/** What makes a {@link BuildStepError}. */
export interface BuildStepErrorOptions {
  /** The step that failed. */
  step: BuildStepInfo;
  /** Exit code of the RUN command (null when a signal ended it). */
  exitCode: number | null;
  /** The last part of its output (stdout and stderr together). */
  output: string;
}

/** A RUN step exited with a non-zero status; nothing was tagged (`code` is `ERR_BUILD_STEP_FAILED`). */
export class BuildStepError extends NacelleError {
  /** The step that failed. */
  readonly step: BuildStepInfo;
  /** Its exit code (null when a signal ended it). */
  readonly exitCode: number | null;
  /** The last part of its output. */
  readonly output: string;
  /** 1-based line of the instruction. */
  readonly line: number;

  /**
   * @param options - the step, exit code and output
   */
  constructor(options: BuildStepErrorOptions) {
    const tail = options.output.trim() ? `\n${options.output.trimEnd().split('\n').slice(-10).join('\n')}` : '';
    super(
      `step ${options.step.step}/${options.step.steps} (Dockerfile line ${options.step.line}) '${options.step.instruction}' failed with exit code ${options.exitCode ?? 'null (killed by a signal)'}${tail}`,
      { code: 'ERR_BUILD_STEP_FAILED' },
    );
    this.step = options.step;
    this.exitCode = options.exitCode;
    this.output = options.output;
    this.line = options.step.line;
  }
}
