# Helpers shared by install.ps1, uninstall.ps1, stress.ps1 and verifier.ps1.
# Dot-source it: . (Join-Path $PSScriptRoot 'NmrCommon.ps1')

# Throws unless the session is elevated; $Purpose completes the message
# ("... needs an elevated PowerShell").
function Assert-Administrator {
    param([Parameter(Mandatory = $true)] [string] $Purpose)
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw "$Purpose needs an elevated PowerShell (""Run as administrator"")."
    }
}

# Runs a native program and returns its exit code and its merged stdout/stderr.
# $ErrorActionPreference is 'Continue' in here because Windows PowerShell 5.1
# turns a native program's stderr line into a terminating error under 'Stop'
# when stderr is redirected; the exit code is what decides success.
function Invoke-NativeCapture {
    param(
        [Parameter(Mandatory = $true)] [string] $FilePath,
        [string[]] $ArgumentList = @()
    )
    $ErrorActionPreference = 'Continue'
    Write-Verbose "> $FilePath $($ArgumentList -join ' ')"
    $output = & $FilePath @ArgumentList 2>&1 | Out-String
    return [pscustomobject]@{ ExitCode = $LASTEXITCODE; Output = $output.TrimEnd() }
}

# Runs a native program, prints its output, throws (with the output) unless the
# exit code is one of $AllowedExitCodes, and returns the exit code.
function Invoke-Native {
    param(
        [Parameter(Mandatory = $true)] [string] $FilePath,
        [string[]] $ArgumentList = @(),
        [int[]] $AllowedExitCodes = @(0)
    )
    $result = Invoke-NativeCapture -FilePath $FilePath -ArgumentList $ArgumentList
    if ($AllowedExitCodes -notcontains $result.ExitCode) {
        throw "'$FilePath $($ArgumentList -join ' ')' failed with exit code $($result.ExitCode):`n$($result.Output)"
    }
    if ($result.Output) { Write-Host $result.Output }
    return $result.ExitCode
}
