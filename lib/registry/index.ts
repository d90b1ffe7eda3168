/**
 * The distribution-spec client: pull and push images, with Basic and Bearer
 * authentication, credentials from Docker's config, and progress events.
 * @module
 */
export { pullImage } from './pull';
export type { PullOptions, PullResult } from './pull';
export { pushImage } from './push';
export type { PushOptions, PushResult } from './push';
export { RegistryClient, registryHost, plainHttpAllowed } from './client';
export type { RegistryClientOptions, RegistryMethod, RegistryRequest, RegistryResponse } from './client';
export { RegistryError } from './errors';
export type { RegistryErrorDetail, RegistryErrorOptions } from './errors';
export { parseChallenge } from './auth';
export type { AuthChallenge } from './auth';
export { dockerCredentials, dockerConfigPath, normalizeRegistryKey } from './docker-config';
export type { RegistryCredentials } from './docker-config';
export { parsePlatform, formatPlatform, hostPlatform, platformMatches, selectPlatform } from './platform';
export type { PlatformInput } from './platform';
export type { ProgressEvent, ProgressHandler, ProgressKind, ProgressStatus } from './progress';
