/**
 * virtmesh's gateway from Node: the generated clients (src/gen, ts-proto on
 * @grpc/grpc-js), dialled over TLS with the mesh's CA and a client certificate
 * or a bearer token, with unary calls as promises that reject with a typed
 * VirtmeshError (google.rpc.ErrorInfo's reason, domain and metadata).
 */
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

import { ComputeServiceClient, ComputeServiceService } from "./gen/virtmesh/compute/v1/compute_service";
import { GatewayServiceClient, GatewayServiceService } from "./gen/virtmesh/gateway/v1/gateway_service";
import { InterfaceServiceClient, InterfaceServiceService } from "./gen/virtmesh/iface/v1/iface_service";
import { NetworkServiceClient, NetworkServiceService } from "./gen/virtmesh/network/v1/network_service";
import { NodeDeviceServiceClient, NodeDeviceServiceService } from "./gen/virtmesh/nodedev/v1/nodedev_service";
import { NWFilterServiceClient, NWFilterServiceService } from "./gen/virtmesh/nwfilter/v1/nwfilter_service";
import { SecretServiceClient, SecretServiceService } from "./gen/virtmesh/secret/v1/secret_service";
import { StorageServiceClient, StorageServiceService } from "./gen/virtmesh/storage/v1/storage_service";

/**
 * Where the gateway is and who the caller is: the CA always, then a client
 * certificate (cert and key: the mutual-TLS port, 16514 by default), a bearer
 * token (the token-only port, 16515 by default, or on top of a certificate), or
 * both. Files are paths; `token` is the token itself.
 */
export interface DialOptions {
  address: string;
  ca: string;
  cert?: string;
  key?: string;
  token?: string;
  /** TLS server name, when it is not the host in `address` */
  serverName?: string;
}

/** A failed call: its gRPC status and the google.rpc.ErrorInfo it carried. */
export class VirtmeshError extends Error {
  constructor(
    readonly code: grpc.status,
    readonly details: string,
    readonly reason: string,
    readonly domain: string,
    readonly metadata: Record<string, string>,
  ) {
    super(`${grpc.status[code]}: ${details}${reason ? ` (${reason})` : ""}`);
    this.name = "VirtmeshError";
  }

  /** The status code's name ("NOT_FOUND", ...). */
  get codeName(): string {
    return grpc.status[this.code];
  }
}

/** The VirtmeshError of a failed call (a grpc-js ServiceError), or the error as it is. */
export function asVirtmeshError(error: unknown): VirtmeshError | unknown {
  if (error instanceof VirtmeshError) return error;
  const failed = error as Partial<grpc.ServiceError>;
  if (typeof failed?.code !== "number" || !failed.metadata) return error;
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  for (const raw of failed.metadata.get("grpc-status-details-bin")) {
    const found = errorInfo(Buffer.isBuffer(raw) ? raw : Buffer.from(String(raw), "base64"));
    if (found) Object.assign(info, found);
  }
  return new VirtmeshError(failed.code, failed.details ?? "", info.reason, info.domain, info.metadata);
}

type Fields = (field: number, reader: BinaryReader) => void;

function readMessage(bytes: Uint8Array, onField: Fields): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (wireType === WireType.LengthDelimited && [1, 2, 3].includes(field)) {
      onField(field, reader);
    } else {
      reader.skip(wireType);
    }
  }
}

interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** The first google.rpc.ErrorInfo in a serialized google.rpc.Status (details = 3,
 * each a google.protobuf.Any: type_url = 1, value = 2). */
function errorInfo(status: Uint8Array): ErrorInfo | undefined {
  let found: ErrorInfo | undefined;
  readMessage(status, (field, reader) => {
    if (field !== 3) return void reader.skip(WireType.LengthDelimited);
    let typeUrl = "";
    let value: Uint8Array | undefined;
    readMessage(reader.bytes(), (anyField, anyReader) => {
      if (anyField === 1) typeUrl = anyReader.string();
      else if (anyField === 2) value = anyReader.bytes();
      else anyReader.skip(WireType.LengthDelimited);
    });
    if (found || !value || !typeUrl.endsWith("/google.rpc.ErrorInfo")) return;
    const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
    readMessage(value, (infoField, infoReader) => {
      if (infoField === 1) info.reason = infoReader.string();
      else if (infoField === 2) info.domain = infoReader.string();
      else {
        let key = "";
        let text = "";
        readMessage(infoReader.bytes(), (entryField, entryReader) => {
          if (entryField === 1) key = entryReader.string();
          else if (entryField === 2) text = entryReader.string();
          else entryReader.skip(WireType.LengthDelimited);
        });
        info.metadata[key] = text;
      }
    });
    found = info;
  });
  return found;
}

type UnaryMethods<D> = {
  [K in keyof D as D[K] extends { requestStream: false; responseStream: false } ? K : never]:
    D[K] extends { requestSerialize: (value: infer Req) => Buffer; responseDeserialize: (value: Buffer) => infer Res }
      ? (request: Req, options?: Partial<grpc.CallOptions>, metadata?: grpc.Metadata) => Promise<Res>
      : never;
};

/** A service's generated client, and its unary methods as promises (`.call.listDomains(...)`). */
export type Service<C, D> = C & { call: UnaryMethods<D> };

function service<C extends grpc.Client, D extends object>(
  Constructor: new (address: string, credentials: grpc.ChannelCredentials, options?: object) => C,
  definition: D,
  address: string,
  credentials: grpc.ChannelCredentials,
  options: object,
): Service<C, D> {
  const client = new Constructor(address, credentials, options) as C & Record<string, Function>;
  const call: Record<string, Function> = {};
  for (const [name, method] of Object.entries(definition)) {
    if (method.requestStream || method.responseStream) continue;
    call[name] = (request: unknown, callOptions: Partial<grpc.CallOptions> = {}, metadata = new grpc.Metadata()) =>
      new Promise((resolve, reject) => {
        client[name](request, metadata, callOptions, (error: grpc.ServiceError | null, response: unknown) =>
          error ? reject(asVirtmeshError(error)) : resolve(response),
        );
      });
  }
  return Object.assign(client, { call }) as unknown as Service<C, D>;
}

/** A stub of every service behind the gateway, on one channel. */
export interface Mesh {
  compute: Service<ComputeServiceClient, typeof ComputeServiceService>;
  storage: Service<StorageServiceClient, typeof StorageServiceService>;
  network: Service<NetworkServiceClient, typeof NetworkServiceService>;
  nwfilter: Service<NWFilterServiceClient, typeof NWFilterServiceService>;
  secret: Service<SecretServiceClient, typeof SecretServiceService>;
  nodedev: Service<NodeDeviceServiceClient, typeof NodeDeviceServiceService>;
  iface: Service<InterfaceServiceClient, typeof InterfaceServiceService>;
  gateway: Service<GatewayServiceClient, typeof GatewayServiceService>;
  close(): void;
}

/** The channel credentials for `options`: TLS with the CA, a client certificate and/or a token. */
export function credentials(options: DialOptions): grpc.ChannelCredentials {
  if (!options.ca) throw new Error("virtmesh: the CA (ca) is required");
  if (Boolean(options.cert) !== Boolean(options.key)) throw new Error("virtmesh: cert and key go together");
  if (!options.cert && !options.token) throw new Error("virtmesh: a client certificate or a token is required");
  const tls = grpc.credentials.createSsl(
    readFileSync(options.ca),
    options.key ? readFileSync(options.key) : null,
    options.cert ? readFileSync(options.cert) : null,
  );
  if (!options.token) return tls;
  const token = options.token;
  const bearer = grpc.credentials.createFromMetadataGenerator((_, callback) => {
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${token}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

/** Connect (lazily, as grpc-js does) to the gateway at `options.address`. */
export function dial(options: DialOptions): Mesh {
  const creds = credentials(options);
  const channelOptions: Record<string, string> = options.serverName
    ? { "grpc.ssl_target_name_override": options.serverName, "grpc.default_authority": options.serverName }
    : {};
  const compute = service(ComputeServiceClient, ComputeServiceService, options.address, creds, channelOptions);
  // One channel for all: the other clients share the first one's.
  const shared = { ...channelOptions, channelOverride: compute.getChannel() };
  const mesh = {
    compute,
    storage: service(StorageServiceClient, StorageServiceService, options.address, creds, shared),
    network: service(NetworkServiceClient, NetworkServiceService, options.address, creds, shared),
    nwfilter: service(NWFilterServiceClient, NWFilterServiceService, options.address, creds, shared),
    secret: service(SecretServiceClient, SecretServiceService, options.address, creds, shared),
    nodedev: service(NodeDeviceServiceClient, NodeDeviceServiceService, options.address, creds, shared),
    iface: service(InterfaceServiceClient, InterfaceServiceService, options.address, creds, shared),
    gateway: service(GatewayServiceClient, GatewayServiceService, options.address, creds, shared),
    close: () => compute.close(),
  };
  return mesh;
}

export * as compute from "./gen/virtmesh/compute/v1/compute_service";
export * as storage from "./gen/virtmesh/storage/v1/storage_service";
export * as network from "./gen/virtmesh/network/v1/network_service";
export * as nwfilter from "./gen/virtmesh/nwfilter/v1/nwfilter_service";
export * as secret from "./gen/virtmesh/secret/v1/secret_service";
export * as nodedev from "./gen/virtmesh/nodedev/v1/nodedev_service";
export * as iface from "./gen/virtmesh/iface/v1/iface_service";
export * as gateway from "./gen/virtmesh/gateway/v1/gateway_service";
