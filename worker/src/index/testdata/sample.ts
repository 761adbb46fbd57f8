export interface Shape {
  area(): number;
  name: string;
}

export type Id = string | number;

enum Color {
  Red,
}

namespace Geometry {
  export const ORIGIN = 0;
  export function distance(): number {
    return 0;
  }
}

declare module "external" {
  export function ext(): void;
}

abstract class Base<T> {
  abstract describe(): string;
  protected count = 0;
  public run(): void {}
}

function overload(a: string): void;
function overload(a: any): void {}

export const handler = async (req: Request): Promise<void> => {};
